"""Calibrated gradient-masking checks: the statistical rule with asserted numbers, its false-positive
rate, real measurements of ordinary models that the old 1-pp rule flagged, and models that really mask
gradients failing the check meant to catch them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustmoe_bench.evaluation.checks import (
    ALPHA,
    EPS_INCREASE_P0,
    MIN_COUNT,
    SQUARE_P0,
    ZERO_GRAD_P0,
    count_rule,
    square_vs_whitebox,
    zero_gradients,
)
from robustmoe_bench.stats import binom_sf

REPO = Path(__file__).resolve().parents[1]


def test_rule_numbers() -> None:
    # the smallest flagged count for m survivors at p0 = 5 %, alpha = 1 %, at least MIN_COUNT
    assert [count_rule(0, m, SQUARE_P0)["fail_at"] for m in (17, 29, 64, 130, 200)] == [5, 6, 9, 14, 19]
    assert [count_rule(0, m, ZERO_GRAD_P0)["fail_at"] for m in (17, 64, 130, 200)] == [5, 5, 8, 10]
    assert count_rule(0, 3, SQUARE_P0)["fail_at"] == 4  # cannot fail on 3 examples
    r = count_rule(9, 64, SQUARE_P0)
    assert r["flagged"] and r["p_value"] == pytest.approx(binom_sf(9, 64, 0.05)) and r["p_value"] <= ALPHA
    assert not count_rule(8, 64, SQUARE_P0)["flagged"]
    assert not count_rule(4, 4, SQUARE_P0)["flagged"]  # below the minimum count, however extreme
    assert count_rule(MIN_COUNT, MIN_COUNT, SQUARE_P0)["flagged"]


def test_false_positive_rate_is_at_most_alpha() -> None:
    """For a model exactly at the tolerated rate p0, the check fails at most ALPHA of the time: exactly
    (binomial tail at the critical count) and by simulation."""
    rng = np.random.default_rng(0)
    for p0 in (SQUARE_P0, ZERO_GRAD_P0, EPS_INCREASE_P0):
        for m in (20, 64, 200, 1000):
            fail_at = count_rule(0, m, p0)["fail_at"]
            assert binom_sf(fail_at, m, p0) <= ALPHA
            # the rule is "k >= fail_at" (monotone in k)
            assert [count_rule(k, m, p0)["flagged"] for k in (fail_at - 1, fail_at)] == [False, True]
            draws = rng.binomial(m, p0, size=20000)
            assert np.mean(draws >= fail_at) <= ALPHA + 0.003


def test_measured_ordinary_models_pass_that_the_old_rule_flagged() -> None:
    """The zoo's earlier TRADES models, evaluated with the full suite on 200 Fashion-MNIST examples (their
    results as recorded in robustmoe_bench/zoo_registry.json up to commit 78a8b8a, before the zoo was
    refreshed): Square broke 1 of the 29 white-box survivors (at-dense) and 2 of 17 (at-moe) among the 64
    checked, i.e. 1.6 and 3.1 pp: both flagged by the old '1 pp of n' rule, both ordinary for the binomial
    rule. So does a case like the issue's: 3 of 130 survivors at n = 200, and AT(MoE) of the mini Table 1's
    seed 0: 11 of 124 at n = 1000. The zoo's models (that seed's five, table1 suite with the checks,
    n = 1000; the four full-copy top-k MoEs of issue 13, full suite, n = 500) pass every check as recorded."""
    import json

    for k, m in ((1, 29), (2, 17)):  # the measurements this test rests on
        assert not count_rule(k, m, SQUARE_P0)["flagged"]
        assert 100 * k / 64 > 1.0  # what the old rule did with it
    assert not count_rule(3, 130, SQUARE_P0)["flagged"] and not count_rule(11, 124, SQUARE_P0)["flagged"]
    reg = json.loads((REPO / "robustmoe_bench" / "zoo_registry.json").read_text())["models"]
    checks = {"eps_increase", "square_vs_whitebox", "zero_gradients", "deterministic_routing"}
    for name in ("fmnist-at-dense", "fmnist-at-sdense", "fmnist-at-sparse", "fmnist-at-moe", "fmnist-advmoe"):
        res = reg[name]["results"]
        assert res["n_examples"] >= 1000 and not res["unreliable"], name
        assert set(res["flags"]) == checks and all(f["passed"] for f in res["flags"].values()), name
    for name in ("fmnist-advmoe-conv-n4-k1", "fmnist-advmoe-conv-n4-k2", "fmnist-advmoe-block-n4-k1",
                 "fmnist-advmoe-block-n4-k2"):
        res = reg[name]["results"]
        assert res["suite"] == "full" and res["n_examples"] >= 500 and not res["unreliable"], name
        assert set(res["flags"]) == checks and all(f["passed"] for f in res["flags"].values()), name
        assert res["model"]["moe"] in ("conv", "block") and res["model"]["k"] in (1, 2), name


def test_square_check_end_to_end_on_masks() -> None:
    """square_vs_whitebox with the suite's own Square outcome: the rule applied to the survivors."""
    survivors = torch.zeros(200, dtype=torch.bool)
    survivors[:130] = True
    broke = torch.zeros(200, dtype=torch.bool)
    broke[:3] = True
    ok = square_vs_whitebox(nn.Identity(), torch.zeros(200, 1, 2, 2), torch.zeros(200, dtype=torch.long), survivors,
                            eps=0.1, norm="Linf", seed=0, factory=None, square_broken=broke)  # type: ignore[arg-type]
    assert ok["passed"] and ok["values"]["survivors"] == 130 and ok["values"]["broken_by_square_only"] == 3
    assert ok["values"]["fail_at"] == 14 and "fails at >= 14" in ok["evidence"]
    broke[:14] = True
    bad = square_vs_whitebox(nn.Identity(), torch.zeros(200, 1, 2, 2), torch.zeros(200, dtype=torch.long), survivors,
                             eps=0.1, norm="Linf", seed=0, factory=None, square_broken=broke)  # type: ignore[arg-type]
    assert not bad["passed"] and bad["values"]["p_value"] <= ALPHA


def test_hard_routing_into_a_constant_expert_fails_the_right_checks() -> None:
    """An MoE whose hard routing masks the gradient (tests/helpers_models.py): plain PGD-50 finds
    nothing, Square breaks every survivor, and every input gradient is exactly zero."""
    from helpers_models import make_masked_gradient_moe

    from robustmoe_bench.attacks import create_attack
    from robustmoe_bench.evaluation.suites import predict

    model, x, y = make_masked_gradient_moe(eps=0.1, n=12)
    torch.manual_seed(0)
    x_adv = create_attack("pgd", 0.1, steps=50, seed=0)(model, x, y)
    whitebox = predict(model, x_adv, True)[0].eq(y)
    assert int(whitebox.sum()) == 12  # "100 % robust" to PGD-50
    sq = square_vs_whitebox(model, x, y, whitebox, eps=0.1, norm="Linf", seed=0, factory=create_attack)
    assert not sq["passed"] and sq["values"]["broken_by_square_only"] == 12
    zg = zero_gradients(model, x, y)
    assert not zg["passed"] and zg["values"]["count"] == 12


def test_non_differentiable_input_quantiser_fails_zero_gradients() -> None:
    """A real trained model (the zoo's TRADES ResNet-mini) behind an input quantiser (torch.round: zero
    gradient everywhere) fails zero_gradients; the same model without it passes."""
    from robustmoe_bench.checkpoint import load_checkpoint

    model = load_checkpoint(REPO / "model_zoo" / "fmnist-at-dense.safetensors").model
    torch.manual_seed(0)
    # inputs the model gets right: Fashion-MNIST-shaped noise, labelled with the model's own prediction
    x = torch.rand(40, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)

    class Quantised(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.inner(torch.round(z * 4) / 4)

    assert zero_gradients(model, x, y)["passed"]
    q = Quantised(model)
    with torch.no_grad():
        yq = q(x).argmax(1)
    zq = zero_gradients(q, x, yq)
    assert not zq["passed"] and zq["values"]["count"] == 40 and zq["values"]["entries_zero"] == 100.0


@pytest.mark.slow
def test_ordinary_at_model_passes_every_check_at_n200(tmp_path: Path) -> None:
    """The zoo's TRADES Dense model, full suite, 200 Fashion-MNIST test examples, every check on all 200."""
    from robustmoe_bench.evaluation import evaluate

    res = evaluate(REPO / "model_zoo" / "fmnist-at-dense.safetensors", suite="full", n_examples=200,
                   progress=False, check_examples=200)
    assert {k: f["passed"] for k, f in res.flags.items()} == {
        "eps_increase": True, "square_vs_whitebox": True, "zero_gradients": True, "deterministic_routing": True}
    assert not res.unreliable and res.flags["square_vs_whitebox"]["values"]["n"] == 200
