"""Models robustmoe-bench did not build: ``--model module:factory`` through evaluate / dissect / iou / flops,
the routing-adapter protocol (generic hook adapter, top-k sets, a user-written forcing adapter), and bad input.

The foreign MoE (tests/helpers_foreign_moe.py) is unlike ours: full-copy conv experts, softmax top-k gates,
``(logits, aux_loss)`` outputs, and normalisation outside the model (``--normalize 0.5/0.25``).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from helpers_foreign_moe import GateAdapter, make_top1, make_top2, train_briefly
from robustmoe_bench.adapters import HookAdapter, load_external, pathway_iou, routing_changed
from robustmoe_bench.adapters.routing import as_sets
from robustmoe_bench.attacks import create_attack
from robustmoe_bench.attacks.adaptive import swap_in
from robustmoe_bench.cli import run as cli_run
from robustmoe_bench.data import as_tensors, load_dataset
from robustmoe_bench.leaderboard.entry import entry_from_results

GATES = r"layers\.\d+\.gate"


def synth(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST-shaped uint8 images whose class is their brightness level (0.05, 0.15, ... 0.95)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = ((y.float() + 0.5) / 10).view(-1, 1, 1, 1) + (torch.rand(n, 1, 28, 28, generator=g) - 0.5) * 0.1
    return (x * 255).round().clamp(0, 255).to(torch.uint8), y


def write_idx(folder: Path, prefix: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    for stem, magic, arr in ((f"{prefix}-images-idx3-ubyte", 2051, images.numpy().reshape(-1, 28, 28)),
                             (f"{prefix}-labels-idx1-ubyte", 2049, labels.numpy().astype(np.uint8))):
        data = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
        (folder / f"{stem}.gz").write_bytes(gzip.compress(data))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 40-example test set, the foreign MoEs briefly trained (top-2: a torch file with a nested
    state_dict; top-1: safetensors) and random ResNet-18 weights."""
    root = tmp_path_factory.mktemp("external")
    data = root / "fmnist"
    data.mkdir()
    xtr, ytr = synth(320, 1)
    write_idx(data, "train", xtr, ytr)
    write_idx(data, "t10k", *synth(40, 2))
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        top2 = train_briefly(make_top2(), xtr.float() / 255, ytr, steps=60)
        top1 = train_briefly(make_top1(), xtr.float() / 255, ytr, steps=120)
    finally:
        torch.set_num_threads(prev)
    torch.save({"state_dict": top2.state_dict(), "epoch": 3}, root / "top2.pt")
    save_file(top1.state_dict(), str(root / "top1.safetensors"))
    torch.manual_seed(0)
    save_file(torchvision.models.resnet18(num_classes=10).state_dict(), str(root / "r18.safetensors"))
    return {"data": data, "root": root, "top2": root / "top2.pt", "top1": root / "top1.safetensors",
            "r18": root / "r18.safetensors"}


def top2_args(setup: dict[str, Path]) -> list[str]:
    return ["--model", "helpers_foreign_moe:make_top2", "--weights", str(setup["top2"]), "--weights-key", "state_dict",
            "--normalize", "0.5/0.25", "--router-modules", GATES, "--router-top-k", "2", "--dataset", "fashion-mnist",
            "--data-root", str(setup["data"])]


def test_set_semantics_of_top_k_routing() -> None:
    a = as_sets(torch.tensor([[[3, 1], [0, 2]], [[1, 2], [2, 3]]]))  # [L=2, B=2, k=2]
    b = as_sets(torch.tensor([[[1, 3], [0, 1]], [[2, 1], [2, 3]]]))
    # input 0: same sets in both layers (order does not matter); input 1: layer 0 changed {0,2} -> {0,1}
    assert routing_changed(a, b).tolist() == [[False, True], [False, False]]
    # pathway = (layer, expert) pairs: input 0 identical (IoU 1); input 1 shares 3 of 5 distinct pairs
    assert pathway_iou(a, b).tolist() == pytest.approx([1.0, 3 / 5])
    # the minimal set containing j: unchanged if chosen, else the lowest-scored member swapped for j
    hard = torch.tensor([[0, 2], [1, 3]])
    scores = torch.tensor([[5.0, 0.0, 1.0, 0.5], [0.0, 2.0, 0.1, 3.0]])
    assert swap_in(hard, scores, 2).tolist() == [[0, 2], [2, 3]]
    assert swap_in(hard, scores, 0).tolist() == [[0, 2], [0, 3]]


def test_generic_adapter_traces_top2_sets_and_forces_pathways(setup: dict[str, Path]) -> None:
    model = load_external("helpers_foreign_moe:make_top2", dataset="fashion-mnist", weights=setup["top2"],
                          weights_key="state_dict", normalize="0.5/0.25", router_modules=GATES, router_top_k=2)
    x, y = as_tensors(load_dataset("fashion-mnist", "test", root=setup["data"]))
    ad = model.routing_adapter
    assert isinstance(ad, HookAdapter) and ad.layer_names() == ["layers.0.gate", "layers.1.gate"]
    assert ad.num_experts() == [4, 4]
    with torch.no_grad(), ad.trace() as tr:
        logits = model(x)
    # the wrapper normalises inside and picks the logits out of (logits, aux)
    with torch.no_grad():
        ref, _ = model.net((x - 0.5) / 0.25)
    assert torch.equal(logits, ref)
    ex = tr.experts()
    assert ex.shape == (2, 40, 2)
    assert torch.equal(ex[0], tr.logits()[0].topk(2, dim=1).indices.sort(dim=1).values)
    forced = torch.tensor([0, 3]).expand(40, 2)
    with torch.no_grad(), ad.force({"*": forced}), ad.trace() as tr2:
        out_forced = model(x)
    assert bool((tr2.experts() == torch.tensor([0, 3])).all())
    # forcing changed the computation where the natural sets differ, and the real gate logits are recorded
    assert not torch.allclose(out_forced, logits)
    assert torch.allclose(tr2.logits()[0], tr.logits()[0])


def test_python_api_takes_any_module(setup: dict[str, Path]) -> None:
    from robustmoe_bench.adapters import wrap_module
    from robustmoe_bench.errors import ConfigError
    from robustmoe_bench.evaluation import evaluate

    net = make_top2()
    net.load_state_dict(torch.load(setup["top2"], weights_only=True)["state_dict"])
    model = wrap_module(net.eval(), dataset="fashion-mnist", normalize=([0.5], [0.25]),
                        adapter=HookAdapter(net, GATES, top_k=2))
    res = evaluate(model, suite="quick", n_examples=6, eps=0.05, data_root=setup["data"], progress=False)
    assert res.model["kind"] == "external" and res.model["routing"]["top_k"] == 2
    assert "pgd-20" in res.routing and res.worst_case <= res.clean_acc
    # a plain module (tuple output, no normalisation) is wrapped when the data set is named
    res2 = evaluate(make_top2().eval(), dataset="fashion-mnist", suite="quick", n_examples=4, eps=0.05,
                    data_root=setup["data"], progress=False)
    assert res2.routing == {} and res2.model["output_key"] == 0
    with pytest.raises(ConfigError, match="needs dataset="):
        evaluate(make_top2(), suite="quick", n_examples=4, data_root=setup["data"], progress=False)


def test_resnet18_through_the_standard_suite(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r18.json"
    code = cli_run(["evaluate", "--model", "torchvision.models:resnet18", "--model-arg", "num_classes=10",
                    "--weights", str(setup["r18"]), "--input-size", "3,28,28", "--dataset", "fashion-mnist",
                    "--data-root", str(setup["data"]), "--suite", "standard", "-n", "8", "--eps", "0.1",
                    "--out", str(out), "-q"])
    assert code == 0
    res = json.loads(out.read_text())
    m = res["model"]
    assert m["factory"] == "torchvision.models:resnet18" and m["args"] == {"num_classes": 10}
    assert m["weights_sha256"] == hashlib.sha256(setup["r18"].read_bytes()).hexdigest()
    assert m["input_size"] == [3, 28, 28] and m["routing"] is None
    # the clean accuracy is the random ResNet-18's own, on the same 8 examples (grey repeated to RGB)
    net = torchvision.models.resnet18(num_classes=10).eval()
    from safetensors.torch import load_file

    net.load_state_dict(load_file(str(setup["r18"])))
    from robustmoe_bench.data import subset_indices

    ds = load_dataset("fashion-mnist", "test", root=setup["data"])
    x, y = as_tensors(ds, subset_indices(len(ds), 8, 0))
    with torch.no_grad():
        clean = float((net(x.expand(-1, 3, -1, -1)).argmax(1) == y).float().mean()) * 100
    assert res["clean_acc"] == pytest.approx(clean)
    assert [a["name"] for a in res["attacks"]] == ["pgd-50", "autoattack"]
    assert all(a["skipped"] is None for a in res["attacks"])
    assert res["worst_case_attacks"] == ["pgd-50", "autoattack"]
    assert res["robust_acc"]["worst_case"] <= res["robust_acc"]["pgd-50"] <= res["clean_acc"]
    assert res["routing"] == {} and res["router_robustness"] is None


def test_resnet18_flops_equal_fvcore(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from fvcore.nn import FlopCountAnalysis

    code = cli_run(["flops", "--model", "torchvision.models:resnet18", "--model-arg", "num_classes=10",
                    "--input-size", "3,28,28", "--dataset", "fashion-mnist", "--data-root", str(setup["data"]),
                    "--n-examples", "4", "--json"])
    assert code == 0
    got = json.loads(capsys.readouterr().out)
    net = torchvision.models.resnet18(num_classes=10).eval()
    expected = FlopCountAnalysis(net, (torch.rand(1, 3, 28, 28),)).unsupported_ops_warnings(False).total() / 1e9
    assert got["gflops_total"] == pytest.approx(expected, rel=1e-9) and got["gflops_router"] == 0


def test_top2_moe_full_suite_with_the_generic_adapter(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "top2.json"
    # eps 0.1 (the class gap of the synthetic data): PGD-50 breaks every clean-correct example, so the
    # AutoAttack parts have nothing left (they cost ~30 s per survivor); the router attacks (scope "all")
    # still run on every example. Soft routing on top-2 is tested directly below.
    code = cli_run(["evaluate", *top2_args(setup), "--suite", "full", "-n", "8", "--eps", "0.1", "--out", str(out),
                    "-q"])
    assert code == 0
    res = json.loads(out.read_text())
    names = [a["name"] for a in res["attacks"]]
    assert names == ["pgd-50", "soft-pgd", "joint", "pathway-forced", "router-untargeted",
                     "router-targeted-e0", "router-targeted-e1", "router-targeted-e2", "router-targeted-e3",
                     "apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(a["skipped"] is None for a in res["attacks"]) and res["worst_case_attacks"] == names
    by = {a["name"]: a for a in res["attacks"]}
    # router attacks target the gate logits and change the top-2 sets of the examples they attack
    assert by["router-untargeted"]["n_attacked"] == 8 and by["router-untargeted"]["routing_change"] > 0
    assert res["router_robustness"]["router-untargeted"] == pytest.approx(100 - by["router-untargeted"]["routing_change"])
    assert res["robust_acc"]["worst_case"] <= min(a["robust_acc"] for a in res["attacks"])
    assert set(res["flags"]) == {"eps_increase", "square_vs_whitebox", "zero_gradients", "deterministic_routing"}
    m = res["model"]
    assert m["output_key"] == 0 and m["normalize"] == {"mean": [0.5], "std": [0.25]}
    assert m["routing"]["top_k"] == 2 and m["routing"]["experts"] == [4, 4] and m["routing"]["can_force"] is True
    assert m["weights_key"] == "state_dict"
    # clean accuracy with the normalisation inside = the model's own accuracy on normalised inputs
    from robustmoe_bench.data import subset_indices

    ds = load_dataset("fashion-mnist", "test", root=setup["data"])
    x, y = as_tensors(ds, subset_indices(len(ds), 8, 0))
    net = make_top2()
    net.load_state_dict(torch.load(setup["top2"], weights_only=True)["state_dict"])
    with torch.no_grad():
        clean = float((net.eval()((x - 0.5) / 0.25)[0].argmax(1) == y).float().mean()) * 100
    assert res["clean_acc"] == pytest.approx(clean) and clean >= 50
    # the FLOP count averages the chosen experts only (the model dispatches): in layer 0 each input
    # runs exactly k=2 full-copy experts of 8*16*9*28*28 multiply-adds
    assert res["gflops"]["total"] > 2 * 8 * 16 * 9 * 28 * 28 / 1e9


def test_soft_routing_relaxes_the_top2_selection(setup: dict[str, Path]) -> None:
    """soft-pgd on a soft-gated top-2 MoE: the loss value is the hard model's, its gradient adds the
    selection term (different from the fixed-selection gradient), and the attack lowers accuracy."""
    from robustmoe_bench.attacks.adaptive import SoftPGD

    model = load_external("helpers_foreign_moe:make_top2", dataset="fashion-mnist", weights=setup["top2"],
                          weights_key="state_dict", normalize="0.5/0.25", router_modules=GATES, router_top_k=2)
    x, y = as_tensors(load_dataset("fashion-mnist", "test", root=setup["data"]))
    x, y = x[:16], y[:16]
    ad = model.routing_adapter
    atk = SoftPGD(0.05, steps=20, temperature=1.0)
    atk._adapter = ad
    xa = x.clone().requires_grad_(True)
    loss, _ = atk.loss(model, xa, y, torch.arange(16))
    (g_soft,) = torch.autograd.grad(loss, xa)
    with torch.no_grad(), ad.trace() as tr:
        hard_out = model(x)
    assert float(loss.detach()) == pytest.approx(float(torch.nn.functional.cross_entropy(hard_out, y)), abs=1e-5)
    xb = x.clone().requires_grad_(True)
    with ad.force({n: tr.experts()[i] for i, n in enumerate(ad.layer_names())}):
        (g_fixed,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xb), y), xb)
    assert float(g_fixed.abs().sum()) > 0  # the gate weights of the chosen experts carry gradient
    assert not torch.allclose(g_soft, g_fixed)  # ... and the relaxation adds the selection's
    atk._adapter = None
    x_adv = create_attack("soft-pgd", 0.05, steps=20)(model, x, y)
    with torch.no_grad():
        assert int((model(x_adv).argmax(1) == y).sum()) < int((hard_out.argmax(1) == y).sum())


def test_without_forcing_the_adaptive_attacks_are_reported_skipped(setup: dict[str, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "noforce.json"
    code = cli_run(["evaluate", *top2_args(setup), "--no-router-forcing", "--suite", "full", "-n", "6", "--eps", "0.1",
                    "--out", str(out), "-q"])
    assert code == 0
    text = " ".join(capsys.readouterr().out.split())
    res = json.loads(out.read_text())
    skipped = {a["name"]: a["skipped"] for a in res["attacks"] if a["skipped"] is not None}
    assert set(skipped) == {"soft-pgd", "pathway-forced"}
    assert all("cannot force a pathway" in why for why in skipped.values())
    assert "soft-pgd" not in res["worst_case_attacks"] and "pgd-50" in res["worst_case_attacks"]
    assert len(res["worst_case_attacks"]) == 11 and "soft-pgd" not in res["robust_acc"]
    # the table and the lines under it say so
    assert "worst case over 11 of 13 attacks; skipped: soft-pgd, pathway-forced" in text  # the table's caption
    assert "skipped soft-pgd: the routing adapter (router-modules) cannot force a pathway" in text
    assert "skipped pathway-forced: the routing adapter (router-modules) cannot force a pathway" in text
    assert "worst case over: pgd-50, joint, router-untargeted," in text
    entry = entry_from_results(res, title="Foreign top-2 MoE")
    assert "Attacks skipped: soft-pgd (the routing adapter (router-modules) cannot force a pathway)" in entry.footnote
    assert "The worst case covers only: pgd-50, joint, router-untargeted" in entry.footnote
    # issue 12's additions are written for --model evaluations too: n of N, intervals, per-example outcomes
    n = res["n_examples"]
    assert n == 6 and res["n_total"] == 40 and res["model"]["factory"] == "helpers_foreign_moe:make_top2"
    assert set(res["intervals"]["robust_acc"]) == set(res["robust_acc"])  # skipped attacks have neither
    assert res["intervals"]["robust_acc"]["worst_case"]["n"] == n
    assert set(res["intervals"]["router_robustness"]) == set(res["router_robustness"])
    assert "autoattack" in res["robust_acc_alone"] and "autoattack" in res["intervals"]["robust_acc_alone"]
    outcomes = {k: v for k, v in res["examples"].items() if k != "indices_sha256"}
    assert set(outcomes) == {"clean", "worst_case", "autoattack"} and all(len(v) == n for v in outcomes.values())
    assert outcomes["worst_case"].count("1") == round(res["robust_acc"]["worst_case"] * n / 100)
    # the skipped attacks' footnote survives publishing and the README/page renderer
    root = tmp_path / "lb"
    assert cli_run(["leaderboard", "publish", str(out), "--name", "ForeignTop2", "--root", str(root)]) == 0
    assert cli_run(["leaderboard", "validate", "--root", str(root)]) == 0
    assert cli_run(["leaderboard", "build", "--root", str(root)]) == 0
    md, page = (root / "README.md").read_text(), (root / "index.html").read_text()
    for text in (md, page):
        assert "Attacks skipped: soft-pgd (the routing adapter (router-modules) cannot force a pathway)" in text
        assert "The worst case covers only: pgd-50, joint, router-untargeted" in text


def test_top2_dissection_and_iou_with_the_generic_adapter(setup: dict[str, Path], tmp_path: Path) -> None:
    code = cli_run(["dissect", *top2_args(setup), "--routers", "--attack", "pgd10", "--router-steps", "10",
                    "--n-examples", "12", "--eps", "0.05", "--out", str(tmp_path / "d")])
    assert code == 0
    d = json.loads((tmp_path / "d" / "dissect.json").read_text())
    for part in (d["attack"], d["router_attack"]):
        assert sum(part["counts"].values()) == 12
        assert set(part["layer_change_rates"]) == {"layers.0.gate", "layers.1.gate"}
    # the router attack changes the top-2 sets; routers' robustness = 1 - routing-change rate
    assert d["router_attack"]["routing_change_rate"] > 0
    assert d["routers_alone_robust_acc"] == pytest.approx(100 - d["router_attack"]["routing_change_rate"])
    assert d["model"]["factory"] == "helpers_foreign_moe:make_top2"

    code = cli_run(["iou", *top2_args(setup), "--attack", "pgd10", "--n-examples", "12", "--eps", "0.05",
                    "--out", str(tmp_path / "i")])
    assert code == 0
    r = json.loads((tmp_path / "i" / "iou.json").read_text())
    assert r["reference"] == "majority-pathway" and r["pathway_channels"] == 2 * 2  # L=2 layers x k=2 experts
    for key in ("clean", "adversarial"):
        assert all(abs(sum(s) - 2.0) < 1e-9 for s in r["utilisation"][key]["share"])  # top-2: shares sum to k
        assert len(r[key]) == 12 and all(0 < v <= 1 for v in r[key])
    assert max(r["clean"]) == 1.0  # inputs on the majority pathway itself
    changed = r["routing_change_rate"] / 100 * 12
    assert sum(v < 1 for v in r["clean_vs_adversarial"]) == round(changed)


def test_top1_forced_pathway_adapter_lets_pathway_forced_run(setup: dict[str, Path], tmp_path: Path) -> None:
    model = load_external("helpers_foreign_moe:make_top1", dataset="fashion-mnist", weights=setup["top1"],
                          normalize="0.5/0.25", adapter="helpers_foreign_moe:GateAdapter")
    ad = model.routing_adapter
    assert isinstance(ad, GateAdapter) and ad.top_k == 1 and ad.can_force
    x, y = as_tensors(load_dataset("fashion-mnist", "test", root=setup["data"]))
    with torch.no_grad(), ad.force({"*": torch.full((40,), 2)}), ad.trace() as tr:
        model(x)
    assert bool((tr.experts() == 2).all())
    # direct: pathway-forced (forcing through the user's adapter) stays in the ball and lowers the
    # accuracy under the model's REAL routing
    x_adv = create_attack("pathway-forced", 0.05, steps=10)(model, x[:10], y[:10])
    assert float((x_adv - x[:10]).abs().max()) <= 0.05 + 1e-6
    with torch.no_grad():
        clean_ok = int((model(x[:10]).argmax(1) == y[:10]).sum())
        adv_ok = int((model(x_adv).argmax(1) == y[:10]).sum())
    assert adv_ok < clean_ok

    # through the CLI: dissection under pathway-forced (it runs on every example)
    code = cli_run(["dissect", *top1_args(setup), "--attack", "pathway-forced", "--n-examples", "10", "--eps", "0.05",
                    "--out", str(tmp_path / "d")])
    assert code == 0
    d = json.loads((tmp_path / "d" / "dissect.json").read_text())["attack"]
    assert d["attack"] == "pathway-forced" and sum(d["counts"].values()) == 10
    assert d["params"]["random_pathways"] == 4
    assert d["model_robustness"] < json.loads((tmp_path / "d" / "dissect.json").read_text())["clean_acc"]
    # and in the full suite nothing is skipped (eps 0.1: PGD-50 breaks all, so this stays fast; the
    # slow test below sends survivors through every attack)
    out = tmp_path / "top1.json"
    assert cli_run(["evaluate", *top1_args(setup), "--suite", "full", "-n", "8", "--eps", "0.1", "--out", str(out),
                    "-q"]) == 0
    res = json.loads(out.read_text())
    assert all(a["skipped"] is None for a in res["attacks"]) and len(res["worst_case_attacks"]) == 13
    assert res["model"]["routing"]["adapter"] == "foreign-moe-gates"
    assert res["model"]["adapter"] == "helpers_foreign_moe:GateAdapter"


def top1_args(setup: dict[str, Path]) -> list[str]:
    return ["--model", "helpers_foreign_moe:make_top1", "--weights", str(setup["top1"]), "--normalize", "0.5/0.25",
            "--adapter", "helpers_foreign_moe:GateAdapter", "--dataset", "fashion-mnist", "--data-root",
            str(setup["data"])]


@pytest.mark.slow
def test_top1_full_suite_survivors_reach_pathway_forced_and_autoattack(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "top1.json"
    code = cli_run(["evaluate", *top1_args(setup), "--suite", "full", "-n", "8", "--eps", "0.05", "--out", str(out),
                    "-q"])
    assert code == 0
    res = json.loads(out.read_text())
    by = {a["name"]: a for a in res["attacks"]}
    for name in ("soft-pgd", "joint", "pathway-forced", "apgd-ce", "square"):
        assert by[name]["skipped"] is None and by[name]["n_attacked"] >= 1, name
    assert res["robust_acc"]["worst_case"] <= by["pathway-forced"]["robust_acc"] <= res["clean_acc"]


# ------------------------------------------------------------------ bad input
class Gadget:
    """Not a tensor: a weights-only load must refuse a file holding it."""


@pytest.mark.parametrize("case, message", [
    ("no-import", "cannot import 'no_such_module_xyz': ModuleNotFoundError"),
    ("no-attr", "has no attribute 'make_nothing'"),
    ("raises", "the factory raised ValueError: width 8 is not supported"),
    ("misfit", "weights do not fit: 'layers.0.gate.weight' is [4, 8] in"),
    ("missing-key", "weights do not fit:"),
    ("pickle", "a weights-only load refuses it"),
    ("no-class-dim", "no element of the model's output has the class dimension [2, 10]"),
    ("regex", "--router-modules 'blocks\\.\\d+\\.router' matches no module"),
    ("no-dataset", "--model needs --dataset"),
    ("weights-key", "no key 'model' for --weights-key model"),
])
@pytest.mark.parametrize("command", ["evaluate", "dissect"])
def test_bad_input_is_one_line_exit_2_and_no_output(setup: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str], case: str, message: str,
                                                    command: str) -> None:
    root = setup["root"]
    if case == "missing-key" and not (root / "partial.safetensors").exists():
        sd = make_top2().state_dict()
        sd.pop("head.bias")
        save_file(sd, str(root / "partial.safetensors"))
    if case == "pickle" and not (root / "gadget.pt").exists():
        torch.save({"state_dict": make_top2().state_dict(), "gadget": Gadget()}, root / "gadget.pt")
    top2 = ["--model", "helpers_foreign_moe:make_top2", "--dataset", "fashion-mnist"]
    argv = {
        "no-import": ["--model", "no_such_module_xyz:make", "--dataset", "fashion-mnist"],
        "no-attr": ["--model", "helpers_foreign_moe:make_nothing", "--dataset", "fashion-mnist"],
        "raises": ["--model", "helpers_foreign_moe:make_raising", "--dataset", "fashion-mnist"],
        "misfit": top2 + ["--model-arg", "experts=3", "--weights", str(setup["top2"]), "--weights-key", "state_dict"],
        "missing-key": top2 + ["--weights", str(root / "partial.safetensors")],
        "pickle": top2 + ["--weights", str(root / "gadget.pt"), "--weights-key", "state_dict"],
        "no-class-dim": ["--model", "helpers_foreign_moe:make_features_only", "--dataset", "fashion-mnist"],
        "regex": top2 + ["--router-modules", r"blocks\.\d+\.router"],
        "no-dataset": ["--model", "helpers_foreign_moe:make_top2"],
        "weights-key": top2 + ["--weights", str(setup["top2"]), "--weights-key", "model"],
    }[case]
    if case == "misfit":
        message = f"weights do not fit: 'layers.0.gate.weight' is [4, 8] in {setup['top2']} but [3, 8] in the model"
    if case == "missing-key":
        message = "weights do not fit: " + str(root / "partial.safetensors") + " has no 'head.bias'"
    if command == "evaluate":
        out = tmp_path / "never.json"
        argv = ["evaluate", *argv, "--suite", "quick", "-n", "4", "--data-root", str(setup["data"]), "--out", str(out)]
    else:
        out = tmp_path / "never"
        argv = ["dissect", *argv, "--n-examples", "4", "--data-root", str(setup["data"]), "--out", str(out)]
        if case not in ("regex", "no-class-dim"):
            argv += ["--router-modules", GATES]
    code = cli_run(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_dissect_of_a_model_without_routers_and_iou_mask_refused(setup: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_run(["dissect", "--model", "torchvision.models:resnet18", "--model-arg", "num_classes=10",
                    "--input-size", "3,28,28", "--dataset", "fashion-mnist", "--data-root", str(setup["data"]),
                    "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs routers" in err and "--router-modules" in err and len(err.splitlines()) == 1
    code = cli_run(["iou", *top2_args(setup), "--mask", str(setup["top1"]), "--out", str(tmp_path / "i")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--mask needs a robustmoe-bench MoE checkpoint" in err
    assert not (tmp_path / "d").exists() and not (tmp_path / "i").exists()

def test_user_text_of_external_models_prints_literally(setup: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An adapter's name comes from the user's code and reaches the FLOPs table, the skipped reasons
    (table, lines under it, results JSON): rich markup in it is shown as written, never interpreted."""
    (tmp_path / "hostile_adapter.py").write_text(
        "from helpers_foreign_moe import GateAdapter\n\n\n"
        "class Hostile(GateAdapter):\n    name = '[/] [bold]gates'\n    can_force = False\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    args = [a if a != "helpers_foreign_moe:GateAdapter" else "hostile_adapter:Hostile" for a in top1_args(setup)]
    assert cli_run(["flops", *args]) == 0
    assert "[/] [bold]gates adapter, top-1" in " ".join(capsys.readouterr().out.split())
    out = tmp_path / "hostile.json"
    assert cli_run(["evaluate", *args, "--suite", "full", "-n", "4", "--eps", "0.1", "--out", str(out), "-q"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    reason = "the routing adapter ([/] [bold]gates) cannot force a pathway"
    assert f"skipped soft-pgd: {reason}" in text and f"skipped pathway-forced: {reason}" in text
    res = json.loads(out.read_text())
    assert {a["name"]: a["skipped"] for a in res["attacks"] if a["skipped"]} == {"soft-pgd": reason, "pathway-forced": reason}
