"""Four-category dissection: a hand-built MoE model with a known answer, and the real pipeline via the CLI."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from robustmoe_bench.analysis.dissect import AttackDissection, DissectResult, dissect
from robustmoe_bench.checkpoint import save_checkpoint
from robustmoe_bench.cli import run
from robustmoe_bench.errors import ModelError
from robustmoe_bench.models import ModelSpec, build_model, create_model, routing_trace

LAYERS = ["body.layers.0.conv1", "body.layers.0.conv2", "body.layers.1.conv1", "body.layers.1.conv2"]


# ------------------------------------------------------------------ the crafted model
def _bn_identity(bn: torch.nn.Module, weight: float = 1.0, bias: float = 0.0) -> None:
    """Eval-mode BN that computes exactly ``weight * x + bias`` (running_var + eps == 1)."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)
    bn.weight.fill_(weight)
    bn.bias.fill_(bias)


def _gate(conv: torch.nn.Module, threshold: float | None) -> None:
    """Gate logits ``[0, 10 * (pooled[0] - threshold)]``: expert 1 iff channel 0's mean > threshold;
    ``None``: always expert 0."""
    fc = conv.router.fc
    fc.weight.zero_()
    if threshold is None:
        fc.bias.copy_(torch.tensor([1.0, 0.0]))
    else:
        fc.weight[1, 0] = 10.0
        fc.bias.copy_(torch.tensor([0.0, -10.0 * threshold]))


@torch.no_grad()
def crafted_model() -> torch.nn.Module:
    """resnet-tiny MoE (layer routers) on constant 1x8x8 images of intensity c whose behaviour is analytic:

    * ``layers.0.conv1`` routes to expert 1 iff c > 0.5, ``layers.1.conv1`` iff c > 0.7; the other two
      MoE layers always choose expert 0;
    * the prediction is class 1 iff 8 * relu(c - 0.3) > 0.4 (i.e. c > 0.35), else class 0,
      whatever the routing (every block's main branch is zeroed by its BN; the signal runs through the
      stem and the shortcuts).
    """
    spec = ModelSpec(arch="resnet-tiny", kind="moe", experts=2, scale=0.5, router="layer", layout="slice", ste="softmax",
                     dataset="fashion-mnist", num_classes=10, input_shape=(1, 8, 8), mean=(0.0,), std=(1.0,))
    m = build_model(spec)
    body = m.body
    body.stem.conv.weight.zero_()
    body.stem.conv.weight[:, 0, 1, 1] = 1.0  # every stem channel = the image
    _bn_identity(body.stem.bn)
    b0, b1 = body.layers
    for bn in (b0.bn1, b1.bn1):
        _bn_identity(bn)
    _bn_identity(b0.bn2, weight=0.0)  # main branches contribute zero
    _bn_identity(b1.bn2, weight=0.0)
    b1.sc_conv.weight.fill_(0.25)  # mean of the 4 channels of the input slice = c
    _bn_identity(b1.sc_bn, bias=-0.3)
    _gate(b0.conv1, 0.5)
    _gate(b0.conv2, None)
    _gate(b1.conv1, 0.7)
    _gate(b1.conv2, None)
    body.fc.weight.zero_()
    body.fc.weight[1, :] = 1.0
    body.fc.bias.copy_(torch.tensor([0.4, 0.0] + [-100.0] * 8))
    return m.eval()


class Shift:
    """A deterministic stand-in attack: ``clamp(x + delta, 0, 1)``; counts its calls."""

    def __init__(self, delta: float) -> None:
        self.delta, self.calls, self.seen = delta, 0, 0
        self.name = f"shift{delta:+g}"
        self.params = {"delta": delta}

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.seen += x.shape[0]
        return (x + self.delta).clamp(0, 1)


# intensity c and label y of the 12 examples; categories worked out by hand in the tests below
C = [0.05, 0.10, 0.20, 0.20, 0.34, 0.40, 0.40, 0.60, 0.45, 0.85, 0.85, 0.38]
Y = [0, 0, 0, 1, 0, 1, 2, 1, 1, 1, 7, 1]


def crafted_data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor(C).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    return x, torch.tensor(Y)


def test_crafted_model_behaves_as_designed() -> None:
    """Precondition of the known-answer tests: routing and predictions are the analytic ones."""
    m = crafted_model()
    c = torch.tensor([0.0, 0.2, 0.36, 0.34, 0.49, 0.51, 0.69, 0.71, 1.0])
    x = c.view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    with torch.no_grad(), routing_trace(m) as tr:
        pred = m(x).argmax(1)
    assert pred.tolist() == (c > 0.35).long().tolist()
    e = tr.experts()
    assert tr.layer_names == LAYERS
    assert e[0].tolist() == (c > 0.5).long().tolist()
    assert e[2].tolist() == (c > 0.7).long().tolist()
    assert e[1].tolist() == [0] * 9 and e[3].tolist() == [0] * 9


def test_known_answer_every_count() -> None:
    m = crafted_model()
    x, y = crafted_data()
    up, down = Shift(+0.2), Shift(-0.2)
    r = dissect(m, x, y, attack=up, routers=True, router_attack=down, eps=0.2, batch_size=5)

    # attack once per kind, streamed: 12 examples in batches of 5 -> 3 calls each, every example once
    assert (up.calls, up.seen, down.calls, down.seen) == (3, 12, 3, 12)
    assert r.n_examples == 12 and r.layers == LAYERS
    assert r.clean_acc == pytest.approx(100 * 9 / 12)

    # +0.2: ① a b j; ② f h i l; ③ c d k (d: wrong clean, right on x_adv); ④ e g
    a = r.attack
    assert a.attack == "shift+0.2" and a.params == {"delta": 0.2}
    assert a.counts == {"neither": 3, "routers_only": 4, "prediction_only": 3, "both": 2}
    assert a.percent["routers_only"] == pytest.approx(100 * 4 / 12)
    assert a.router_robustness == pytest.approx(100 * 6 / 12)
    assert a.model_robustness == pytest.approx(100 * 7 / 12)
    assert a.adv_acc == pytest.approx(100 * 8 / 12)
    assert a.routing_change_rate == pytest.approx(100 * 6 / 12)
    assert a.layer_change_rates == pytest.approx(
        {LAYERS[0]: 100 * 5 / 12, LAYERS[1]: 0.0, LAYERS[2]: 100 * 1 / 12, LAYERS[3]: 0.0})

    # -0.2 as the "router attack": ① a b c e; ② h j; ③ d f g i l; ④ k
    b = r.router_attack
    assert b is not None
    assert b.counts == {"neither": 4, "routers_only": 2, "prediction_only": 5, "both": 1}
    assert b.layer_change_rates == pytest.approx(
        {LAYERS[0]: 100 * 1 / 12, LAYERS[1]: 0.0, LAYERS[2]: 100 * 2 / 12, LAYERS[3]: 0.0})
    assert r.routers_alone_robust_acc == pytest.approx(100 * 9 / 12)
    assert b.adv_acc == pytest.approx(100 * 6 / 12)  # a b c e h j


def test_identity_attack_is_all_neither_or_prediction_only() -> None:
    m = crafted_model()
    x, y = crafted_data()
    r = dissect(m, x, y, attack=Shift(0.0), eps=0.2, batch_size=64)
    assert r.attack.counts == {"neither": 9, "routers_only": 0, "prediction_only": 3, "both": 0}
    assert r.router_attack is None and r.routers_alone_robust_acc is None
    assert r.attack.model_robustness == pytest.approx(r.clean_acc)


def test_json_round_trip_and_atomic_save(tmp_path: Path) -> None:
    m = crafted_model()
    x, y = crafted_data()
    r = dissect(m, x, y, attack=Shift(0.2), eps=0.2)
    path = r.save(tmp_path / "d.json")
    d = json.loads(path.read_text())
    assert d["schema_version"] == 1
    back = DissectResult.from_dict(d)
    assert isinstance(back.attack, AttackDissection)
    assert back.attack.counts == r.attack.counts
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]  # no temporary left behind


def test_attack_leaving_the_ball_is_refused() -> None:
    m = crafted_model()
    x, y = crafted_data()
    with pytest.raises(RuntimeError, match="outside"):
        dissect(m, x, y, attack=Shift(0.3), eps=0.2)


def test_dense_model_is_a_clear_error() -> None:
    m = create_model("resnet-tiny", kind="dense", dataset="fashion-mnist")
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ModelError, match="MoE"):
        dissect(m, x, torch.zeros(2, dtype=torch.long), attack=Shift(0.0))


# ------------------------------------------------------------------ the real pipeline through the CLI
def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a valid PNG: the shared ``analysis.plots.check_png`` when present, else PIL."""
    try:
        from robustmoe_bench.analysis.plots import check_png
    except ImportError:
        from PIL import Image

        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.size
    return check_png(path)


def write_fmnist(folder: Path, n_test: int, seed: int = 0, n_train: int = 8) -> None:
    """Tiny Fashion-MNIST IDX files (train and test) with random pixels and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        img = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        lab = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + img.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + lab.tobytes())


def test_cli_end_to_end_matches_an_independent_count(tmp_path: Path) -> None:
    from robustmoe_bench.attacks import create_attack
    from robustmoe_bench.data import as_tensors, load_dataset, subset_indices

    torch.manual_seed(0)
    model = create_model("resnet-tiny", kind="moe", dataset="fashion-mnist").eval()
    ckpt = save_checkpoint(tmp_path / "moe.safetensors", model)
    data = tmp_path / "fm"
    write_fmnist(data, n_test=20)
    out = tmp_path / "out"
    rc = run(["dissect", str(ckpt), "--attack", "pgd3", "--routers", "--router-steps", "3", "--n-examples", "16",
              "--data-root", str(data), "--batch-size", "64", "--out", str(out)])
    assert rc == 0
    d = json.loads((out / "dissect.json").read_text())
    a = d["attack"]
    assert a["attack"] == "pgd-3" and a["params"]["steps"] == 3 and d["eps"] == pytest.approx(0.1)
    assert sum(a["counts"].values()) == 16

    # the same numbers computed here without dissect(): same examples, same seeded attacks, one batch
    x, y = as_tensors(load_dataset("fashion-mnist", "test", root=data), subset_indices(20, 16, 0))
    for key, atk in (("attack", create_attack("pgd", 0.1, steps=3, seed=0)),
                     ("router_attack", create_attack("router-untargeted", 0.1, steps=3, seed=0))):
        x_adv = atk(model, x, y)
        with torch.no_grad(), routing_trace(model) as tr:
            p0 = model(x).argmax(1)
            p1 = model(x_adv).argmax(1)
        changed = torch.stack([r0.expert != r1.expert for r0, r1 in zip(tr.forwards[0], tr.forwards[1])])
        routers = changed.any(0)
        pred = (p0 != y) | (p1 != y)
        assert d[key]["counts"] == {
            "neither": int((~routers & ~pred).sum()), "routers_only": int((routers & ~pred).sum()),
            "prediction_only": int((~routers & pred).sum()), "both": int((routers & pred).sum()),
        }
        assert list(d[key]["layer_change_rates"].values()) == pytest.approx((100 * changed.float().mean(1)).tolist())
    assert d["clean_acc"] == pytest.approx(100 * float((p0 == y).float().mean()))
    assert d["router_attack"]["attack"] == "router-untargeted-3"
    assert d["routers_alone_robust_acc"] == pytest.approx(100 * float((~routers).float().mean()))

    w, h = png_size(out / "dissect.png")
    assert w >= 400 and h >= 250


def test_cli_dense_checkpoint_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = save_checkpoint(tmp_path / "dense.safetensors", create_model("resnet-tiny", dataset="fashion-mnist"))
    data = tmp_path / "fm"
    write_fmnist(data, n_test=4)
    rc = run(["dissect", str(ckpt), "--n-examples", "4", "--data-root", str(data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "MoE" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "dissect.json").exists()
