"""Adaptive attacks and the routing-aware analyses on trained top-k models (ConvMoE, BlockMoE): the
soft-routing relaxation over the top-k selection and the pathway-forced attack change the gates'
chosen expert sets; the relaxation adds a selection gradient; suites, dissection and IoU treat the
routing as sets."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from helpers_topk import train_topk
from robustmoe_bench.adapters.routing import get_adapter
from robustmoe_bench.attacks import create_attack
from robustmoe_bench.attacks.adaptive import SoftPGD
from robustmoe_bench.checkpoint import load_checkpoint
from robustmoe_bench.cli import run
from robustmoe_bench.data import as_tensors, load_dataset, subset_indices
from robustmoe_bench.evaluation import evaluate
from robustmoe_bench.evaluation.suites import AttackSpec, Suite


@pytest.fixture(scope="module", params=[("conv", 2), ("block", 2)], ids=["conv-top2", "block-top2"])
def trained(request, tmp_path_factory) -> dict:
    moe, k = request.param
    d = train_topk(tmp_path_factory.mktemp(f"{moe}{k}"), moe=moe, k=k, experts=3, steps=100)
    model = load_checkpoint(d["ckpt"]).model
    test = load_dataset("fashion-mnist", "test", root=d["root"])
    x, y = as_tensors(test, subset_indices(len(test), 48, 0))
    return {**d, "model": model, "x": x, "y": y, "moe": moe}


def _sets(model, x):
    adapter = get_adapter(model)
    with torch.no_grad(), adapter.trace() as tr:
        pred = model(x).argmax(1)
    return pred, tr.experts()


def test_adapter_reports_sets_and_forces_them(trained):
    model, x = trained["model"], trained["x"][:6]
    adapter = get_adapter(model)
    assert adapter.top_k == 2 and adapter.can_force and adapter.num_experts() == [3] * len(adapter.layer_names())
    _, sets = _sets(model, x)
    assert sets.shape == (len(adapter.layer_names()), 6, 2) and bool((sets[..., 0] < sets[..., 1]).all())
    forced = {n: torch.tensor([[0, 2]] * 6) for n in adapter.layer_names()}
    with adapter.force(forced), adapter.trace() as tr:
        model(x)
    assert torch.equal(tr.experts(), torch.tensor([[[0, 2]] * 6] * len(forced)))


@pytest.mark.parametrize("attack", ["soft-pgd", "pathway-forced"])
def test_adaptive_attacks_change_the_gates_choice(trained, attack):
    model, x, y = trained["model"], trained["x"], trained["y"]
    pred, clean_sets = _sets(model, x)
    atk = create_attack(attack, 0.1, steps=10, seed=0, early_stop=False)
    x_adv = atk(model, x, y)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    pred_a, adv_sets = _sets(model, x_adv)
    changed = (adv_sets != clean_sets).any(dim=-1).any(dim=0)
    # the chosen expert SETS moved (measured with these seeds: ConvMoE 44-50 % of inputs; the single BlockMoE
    # gate, reading stage-1 features, 8 % -- even the router-untargeted attack moves it for 6 % only)
    assert float(changed.double().mean()) >= {"conv": 0.3, "block": 0.06}[trained["moe"]], changed
    clean_acc = float((pred == y).double().mean())
    adv_acc = float((pred_a == y).double().mean())
    assert clean_acc > 0.5 and adv_acc < clean_acc - 0.2


def test_soft_relaxation_adds_a_selection_gradient(trained):
    """The relaxed loss has the hard loss's value but a different input gradient: the gradient of which
    experts are selected, which the hard top-k (routing held fixed) does not have."""
    model, x, y = trained["model"], trained["x"][:16], trained["y"][:16]
    adapter = get_adapter(model)
    soft = SoftPGD(0.1, steps=1, temperature=1.0)
    soft._adapter = adapter
    xs = x.clone().requires_grad_(True)
    relaxed, _ = soft.loss(model, xs, y, torch.arange(16))
    g_soft, = torch.autograd.grad(relaxed, xs)
    _, sets = _sets(model, x)
    xh = x.clone().requires_grad_(True)
    with adapter.force({n: sets[i] for i, n in enumerate(adapter.layer_names())}):
        hard = F.cross_entropy(model(xh), y)
    g_hard, = torch.autograd.grad(hard, xh)
    assert float(relaxed.detach()) == pytest.approx(float(hard.detach()), rel=1e-5)
    assert float((g_soft - g_hard).abs().sum()) > 1e-3 * float(g_hard.abs().sum())


def test_suite_dissect_and_iou_on_sets(trained, tmp_path, capsys):
    suite = Suite("topk-test", "test", (AttackSpec("pgd-5", "pgd", (("steps", 5),)),
                                        AttackSpec("pathway-forced", "pathway-forced", (("steps", 5),), moe_only=True)))
    res = evaluate(str(trained["ckpt"]), suite=suite, n_examples=32, data_root=trained["root"], progress=False)
    assert set(res.routing) == {"pgd-5", "pathway-forced"}
    assert all(a.skipped is None for a in res.attacks)
    # routing change = the expert SET changed in some layer (the cascade leaves pathway-forced few examples)
    assert res.routing["pgd-5"] > 0 and res.robust_acc["worst_case"] < res.clean_acc
    out = tmp_path / "d"
    assert run(["dissect", str(trained["ckpt"]), "--out", str(out), "--attack", "pgd10", "--n-examples", "32",
                "--data-root", str(trained["root"])]) == 0
    d = json.loads((out / "dissect.json").read_text())
    assert d["attack"]["routing_change_rate"] > 0
    u = d["utilisation"]["clean"]
    assert len(u["busiest_share"]) == len(d["layers"]) and all(2 / 3 - 1e-9 <= b <= 1 for b in u["busiest_share"])
    assert all(0 <= e <= 1 for e in u["entropy_normalised"])
    out2 = tmp_path / "i"
    assert run(["iou", str(trained["ckpt"]), "--out", str(out2), "--attack", "pgd10", "--n-examples", "32",
                "--data-root", str(trained["root"])]) == 0
    i = json.loads((out2 / "iou.json").read_text())
    assert i["reference"] == "majority-pathway" and i["utilisation"]["clean"]["busiest_share"]
    text = capsys.readouterr().out
    assert "busiest" in text
