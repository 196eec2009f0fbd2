"""Attack library: reference equivalence (torchattacks PGD, pyautoattack), the base-class contract,
router attacks, and the adaptive attacks on a model whose hard routing masks gradients."""
from __future__ import annotations

import json

import pytest
import torch
import torchattacks

from helpers_models import make_diverse_routing_moe, make_masked_gradient_moe
from robustmoe_bench.attacks import ATTACKS, Attack, create_attack
from robustmoe_bench.errors import ConfigError, DataError, ModelError
from robustmoe_bench.models import create_model, routing_trace

# quick settings so every registered attack runs in the default test run
FAST = {
    "pgd": {"steps": 5}, "soft-pgd": {"steps": 5}, "pathway-forced": {"steps": 3, "random_pathways": 1},
    "joint": {"steps": 5}, "router-untargeted": {"steps": 5}, "router-targeted": {"steps": 5, "target": 1},
    "apgd-ce": {"n_iter": 5}, "apgd-t": {"n_iter": 2}, "fab-t": {"n_iter": 2}, "square": {"n_queries": 20},
    "autoattack": {"n_iter": 2, "n_queries": 10},
}


def _self_labelled(kind: str = "dense", router: str = "layer", n: int = 16, seed: int = 0):
    """A random resnet-tiny and inputs labelled with its own predictions (clean accuracy 100 %)."""
    torch.manual_seed(seed)
    model = create_model("resnet-tiny", kind=kind, router=router, dataset="fashion-mnist").eval()
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _in_ball(x_adv, x, eps, norm) -> bool:
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    return bool((size <= eps + 1e-5).all()) and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


# ------------------------------------------------------------------------- PGD vs torchattacks
@pytest.mark.parametrize("kind", ["dense", "moe"])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_equals_torchattacks_from_same_start(kind, norm):
    model, x, y = _self_labelled(kind)
    eps = 0.05 if norm == "Linf" else 1.0
    ours = create_attack("pgd", eps, norm, steps=10, random_start=False, early_stop=False)
    ref_cls = torchattacks.PGD if norm == "Linf" else torchattacks.PGDL2
    ref = ref_cls(model, eps=eps, alpha=ours.step_size, steps=10, random_start=False)
    x_ours, x_ref = ours(model, x, y), ref(x, y)
    assert float((x_ours - x_ref).abs().max()) <= 1e-6
    assert float((x_ours - x).abs().max()) > eps / 4 if norm == "Linf" else float((x_ours - x).norm()) > eps / 4


def test_pgd_early_stop_never_weaker():
    model, x, y = _self_labelled("moe", n=24)
    eps = 0.03
    ref = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 20, steps=20, random_start=False)
    x_ref = ref(x, y)
    x_es = create_attack("pgd", eps, steps=20, random_start=False, early_stop=True)(model, x, y)
    x_full = create_attack("pgd", eps, steps=20, random_start=False, early_stop=False)(model, x, y)
    with torch.no_grad():
        ok_es, ok_full = model(x_es).argmax(1) == y, model(x_full).argmax(1) == y
    # per example: robust with early stopping => robust without it
    assert not bool((ok_es & ~ok_full).any())
    assert _acc(model, x_es, y) <= _acc(model, x_ref, y)
    assert 0.0 < _acc(model, x_ref, y) < 1.0  # a budget where the comparison is informative


def test_pgd_random_start_reproducible_and_seeded():
    model, x, y = _self_labelled()
    a = create_attack("pgd", 0.05, steps=3, seed=1, early_stop=False)
    x1, x2 = a(model, x, y), a(model, x, y)
    x3 = create_attack("pgd", 0.05, steps=3, seed=2, early_stop=False)(model, x, y)
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, x3)


# ------------------------------------------------------------------------- base-class contract
@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("name", sorted(FAST))
def test_every_attack_stays_in_ball(name, norm):
    assert set(FAST) == set(ATTACKS.names())  # a new attack must be added here
    model, x, y = _self_labelled("moe", n=6)
    eps = 0.1 if norm == "Linf" else 1.5
    attack = create_attack(name, eps, norm, **FAST[name])
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert _in_ball(x_adv, x, eps, norm)
    json.dumps(attack.params())
    assert attack.params()["eps"] == eps and name in ATTACKS


def test_call_restores_mode_and_grad_flags_and_computes_no_parameter_gradients():
    model, x, y = _self_labelled("moe", n=4)
    model.train()
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    create_attack("pgd", 0.05, steps=2)(model, x, y)
    assert model.training
    assert not frozen.requires_grad
    assert all(p.requires_grad for p in list(model.parameters())[1:])
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():  # works under no_grad too, and keeps eval mode
        x_adv = create_attack("pgd", 0.05, steps=2, early_stop=False)(model, x, y)
    assert not model.training and not torch.equal(x_adv, x)


def test_input_and_config_errors():
    model, x, y = _self_labelled(n=2)
    pgd = create_attack("pgd", 0.1)
    with pytest.raises(DataError):
        pgd(model, x * 2, y)
    with pytest.raises(DataError):
        pgd(model, x[0], y)
    with pytest.raises(DataError):
        pgd(model, x, y.float())
    with pytest.raises(ConfigError):
        create_attack("pgd-typo", 0.1)
    with pytest.raises(ConfigError):
        create_attack("pgd", 0.1, stepz=3)
    with pytest.raises(ConfigError):
        create_attack("pgd", 8)  # pixel units
    with pytest.raises(ConfigError):
        create_attack("pgd", 0.1, "L1")
    with pytest.raises(ModelError, match="not an MoE model"):
        create_attack("router-untargeted", 0.1)(model, x, y)
    moe, xm, ym = _self_labelled("moe", n=2)
    with pytest.raises(ConfigError):
        create_attack("router-targeted", 0.1, target=5)(moe, xm, ym)
    with pytest.raises(ConfigError):
        create_attack("router-untargeted", 0.1, layers=["no.such.layer"])(moe, xm, ym)
    small = create_model("resnet-tiny", dataset="fashion-mnist", num_classes=5).eval()
    with pytest.raises(ModelError, match="target classes"):
        create_attack("apgd-t", 0.1, n_iter=2)(small, xm, ym)
    r = repr(create_attack("pgd", 0.1, steps=7))
    assert "steps=7" in r and "eps=0.1" in r
    assert isinstance(pgd, Attack)


# ------------------------------------------------------------------------- pyautoattack adapters
def test_apgd_ce_adapter_equals_direct_pyautoattack():
    from pyautoattack.autopgd_base import APGDAttack

    model, x, y = _self_labelled("moe", n=12)
    eps = 0.03
    ours = create_attack("apgd-ce", eps, n_iter=10, seed=3, engine="reference")(model, x, y)
    direct = APGDAttack(model, n_iter=10, n_restarts=1, eps=eps, norm="Linf", seed=3, loss="ce",
                        eot_iter=1, rho=0.75, device=x.device).perturb(x, y)
    assert torch.equal(ours, direct)
    assert 0.0 <= _acc(model, ours, y) < 1.0


def test_pyautoattack_keeps_global_rng_and_captures_warnings():
    model, x, y = make_masked_gradient_moe(n=4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    attack = create_attack("apgd-t", 0.1, n_iter=2)  # its DLR loss runs AutoAttack's zero-gradient check
    x_adv = attack(model, x, y)
    assert torch.equal(torch.rand(3), expected)
    assert _acc(model, x_adv, y) == 1.0  # zero gradients: APGD-T is fooled by the masking ...
    assert any("zero gradient" in w for w in attack.warnings)  # ... and AutoAttack says so


@pytest.mark.slow
def test_autoattack_equals_direct_standard_run():
    from pyautoattack import AutoAttack

    model, x, y = _self_labelled("moe", n=8)
    eps = 0.03
    ours = create_attack("autoattack", eps, seed=0, engine="reference")(model, x, y)
    aa = AutoAttack(model, norm="Linf", eps=eps, seed=0, version="standard")
    aa.verbose = False
    direct, _ = aa.run_standard_evaluation(x, y, batch_size=250)
    assert _acc(model, ours, y) == _acc(model, direct, y)
    assert torch.equal(ours, direct)


# ------------------------------------------------------------------------- adaptive attacks
def test_adaptive_attacks_beat_pgd_on_masked_gradient_moe():
    eps = 0.1
    model, x, y = make_masked_gradient_moe(eps=eps, n=16)
    pgd_acc = _acc(model, create_attack("pgd", eps, steps=50)(model, x, y), y)
    assert pgd_acc == 1.0  # plain PGD-50 sees zero gradients and reports a perfectly robust model
    for name, kw in [("soft-pgd", {}), ("pathway-forced", {}), ("joint", {})]:
        x_adv = create_attack(name, eps, steps=20, **kw)(model, x, y)
        assert _in_ball(x_adv, x, eps, "Linf")
        acc = _acc(model, x_adv, y)
        assert acc <= 0.1, f"{name}: robust accuracy {acc} (PGD: {pgd_acc})"


def test_pathway_forced_layer_router_pathways():
    model, x, y = make_diverse_routing_moe("layer", n=4)
    attack = create_attack("pathway-forced", 0.05, steps=2, random_pathways=3)
    attack._generator = torch.Generator().manual_seed(0)
    pws = attack.pathways(model, x)
    assert len(pws) == 2 + 1 + 3  # N uniform + clean + random
    names = [n for n, _ in model.moe_layers()]
    # pathways map every MoE layer to [B, k] expert sets (k = 1 here): uniform pathways first
    for e in (0, 1):
        assert sorted(pws[e]) == sorted(names)
        assert all(torch.equal(pws[e][n], torch.full((4, 1), e)) for n in names)
    with torch.no_grad(), routing_trace(model) as tr:
        model(x)
    assert all(torch.equal(pws[2][n], tr.experts()[i].unsqueeze(1)) for i, n in enumerate(names))


# ------------------------------------------------------------------------- router attacks
def _routing(model, x):
    with torch.no_grad(), routing_trace(model) as tr:
        model(x)
    return tr.experts()


def test_router_untargeted_changes_routing_far_more_than_pgd():
    model, x, y = make_diverse_routing_moe("shared", n=24)
    clean = _routing(model, x)
    eps = 0.03

    def change_rate(x_adv):
        return float((_routing(model, x_adv) != clean).any(0).float().mean())

    pgd_rate = change_rate(create_attack("pgd", eps, steps=20, early_stop=False)(model, x, y))
    router_rate = change_rate(create_attack("router-untargeted", eps, steps=20)(model, x, y))
    assert router_rate >= 0.9
    assert router_rate >= pgd_rate + 0.4, (router_rate, pgd_rate)


def test_router_targeted_reaches_target():
    model, x, y = make_diverse_routing_moe("shared", n=24)
    for target in (0, 1):
        x_adv = create_attack("router-targeted", 0.03, steps=20, target=target)(model, x, y)
        reached = (_routing(model, x_adv) == target).all(0).float().mean()
        assert float(reached) >= 0.9
    # one named layer of a layer-router model
    model, x, y = make_diverse_routing_moe("layer", n=24)
    name = model.moe_layers()[0][0]
    x_adv = create_attack("router-targeted", 0.03, steps=20, target=1, layers=name)(model, x, y)
    assert float((_routing(model, x_adv)[0] == 1).float().mean()) >= 0.9
