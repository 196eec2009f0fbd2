"""Gradient-masking checks: flags that say when a robustness number should not be trusted.

Each check returns ``{"passed": bool, "evidence": str, "values": {...}}``. A failed check is reported in
the results (``flags``) and makes them ``unreliable``; it never changes or hides a number.

Calibration. A flag that fires on ordinary adversarially trained models teaches users to ignore it, so
each counting check is a one-sided exact binomial test with a minimum count, not a fixed share of n:
it fails only when the count ``k`` of ``m`` examples is both

* at least :data:`MIN_COUNT` (a handful of examples is never evidence on its own), and
* significantly above the rate ``p0`` an ordinary model may show: ``P(X >= k) <= ALPHA`` for
  ``X ~ Binomial(m, p0)``, with ``ALPHA`` = 1 %.

False-positive rate: for any model whose true rate is at most ``p0``, a check fails with probability at
most ``ALPHA`` = 1 % (the exact binomial test is conservative; the minimum count only lowers it), at any
n. With four checks, an ordinary model is flagged with probability below 4 % (deterministic_routing is
exact and adds none on deterministic hardware). The price is power at small n: at n = 64 Square must
break at least 5-7 of the white-box survivors to be flagged; a masking model, where Square breaks most
of them, is still caught.

* ``eps_increase``: PGD-20 accuracy as the radius grows to 16x (capped below 1 for L-inf, where the
  ball covers almost the whole image box, so only masked gradients keep a model "robust"). ``k``:
  examples still correct at 16x; ``p0`` = 5 % (:data:`EPS_INCREASE_P0`).
* ``square_vs_whitebox``: does gradient-free Square beat the white-box attacks? ``k``: examples the
  white-box attacks left robust that Square broke; ``m``: those survivors; ``p0`` = 5 %
  (:data:`SQUARE_P0`): a different attack finds a few extra examples on any model (measured: the
  zoo's TRADES models at n = 200 had Square break 1 of 29 and 2 of 17 survivors of the 64 checked).
* ``zero_gradients``: examples (clean-correct, where an attack starts) whose cross-entropy input
  gradient is exactly zero everywhere. A differentiable classifier has an all-zero gradient only where
  its loss is flat (a saturated softmax, a piecewise-constant component such as an input quantiser or
  hard routing into a constant expert). ``p0`` = 2 % (:data:`ZERO_GRAD_P0`).
* ``deterministic_routing``: two passes over the same inputs give identical expert choices and
  logits (randomised routing would make every attack number depend on luck). Exact: no statistics.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..attacks.base import check_in_ball
from ..stats import binom_critical, binom_sf
from .suites import derive_seed, has_routing, predict

EPS_MULTIPLIERS = (1, 2, 4, 8, 16)
EPS_CHECK_STEPS = 20
#: L-inf radii are capped just below 1: the attacks refuse eps >= 1 (pixel units), and 0.999 already
#: reaches almost every point of the [0, 1] box.
LINF_CAP = 0.999
#: Significance level of every counting check (its false-positive rate bound).
ALPHA = 0.01
#: No check fails on fewer examples than this.
MIN_COUNT = 5
#: Rates an ordinary model may show (the null hypotheses).
EPS_INCREASE_P0 = 0.05
SQUARE_P0 = 0.05
ZERO_GRAD_P0 = 0.02

Check = dict[str, Any]


def _pct(count: int, total: int) -> float:
    return round(100.0 * count / total, 4) if total else 0.0


def count_rule(k: int, m: int, p0: float, alpha: float = ALPHA, min_count: int = MIN_COUNT) -> dict[str, Any]:
    """The statistical rule of the counting checks: ``k`` of ``m`` is flagged when ``k >= min_count`` and
    ``P(Binomial(m, p0) >= k) <= alpha``. Returns ``flagged``, ``p_value``, and ``fail_at`` (the smallest
    flagged count for this ``m``; ``m + 1`` when none is possible)."""
    p_value = binom_sf(k, m, p0)
    fail_at = max(min_count, binom_critical(m, p0, alpha))
    return {"flagged": bool(k >= min_count and p_value <= alpha), "p_value": p_value,
            "fail_at": fail_at if fail_at <= m else m + 1}


def _rule_text(rule: dict[str, Any], m: int, p0: float) -> str:
    fail_at = "never at this n" if rule["fail_at"] > m else f">= {rule['fail_at']}"
    return f"one-sided binomial p = {rule['p_value']:.2g} against {100 * p0:g}%; fails at {fail_at} (alpha {ALPHA:g})"


def _run(factory: Callable[..., Any], name: str, eps: float, norm: str, seed: int, model: torch.nn.Module,
         x: Tensor, y: Tensor, **hyper: Any) -> Tensor:
    """``[B]`` bool: still correct after attack ``name`` (examples wrong on clean count as broken)."""
    correct = predict(model, x, False)[0].eq(y)
    idx = correct.nonzero().flatten()
    if idx.numel():
        atk = factory(name, eps, norm=norm, seed=seed, **hyper)
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            x_adv = atk(model, x[idx], y[idx]).detach()
        check_in_ball(x_adv, x[idx], eps, norm, name)
        correct[idx] = predict(model, x_adv, False)[0].eq(y[idx])
    return correct


def eps_increase(model: torch.nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, seed: int,
                 factory: Callable[..., Any]) -> Check:
    """PGD-20 accuracy on ``x`` ``[B, C, H, W]`` at eps x (1, 2, 4, 8, 16); fails when the examples still
    correct at x16 are too many for a true rate of 5 % (:func:`count_rule`).

    L-inf radii are capped at :data:`LINF_CAP` (nearly the whole [0, 1] box); the radii used are recorded."""
    accs: dict[str, float] = {}
    radii: dict[str, float] = {}
    last_count = 0
    for m in EPS_MULTIPLIERS:
        e = min(eps * m, LINF_CAP) if norm == "Linf" else eps * m
        radii[f"x{m}"] = round(e, 6)
        ok = _run(factory, "pgd", e, norm, derive_seed(seed, 1, m), model, x, y, steps=EPS_CHECK_STEPS)
        accs[f"x{m}"] = _pct(int(ok.sum()), len(y))
        last_count = int(ok.sum())
    n = len(y)
    rule = count_rule(last_count, n, EPS_INCREASE_P0)
    passed = not rule["flagged"]
    ev = ", ".join(f"{k} {v:.1f}%" for k, v in accs.items())
    return {
        "passed": passed,
        "evidence": f"PGD-{EPS_CHECK_STEPS} accuracy on {n} examples as eps grows: {ev}; {last_count} of {n} "
                    f"still correct at x{EPS_MULTIPLIERS[-1]} ({_rule_text(rule, n, EPS_INCREASE_P0)})",
        "values": {"accuracy": accs, "eps": radii, "n": n, "correct_at_max": last_count,
                   "p_value": rule["p_value"], "fail_at": rule["fail_at"]},
    }


def square_vs_whitebox(model: torch.nn.Module, x: Tensor, y: Tensor, whitebox_robust: Tensor, *, eps: float,
                       norm: str, seed: int, factory: Callable[..., Any],
                       square_broken: Tensor | None = None) -> Check:
    """Does gradient-free Square beat the white-box attacks? ``whitebox_robust`` ``[B]`` bool: robust
    under every white-box attack of the suite.

    Square runs only on the examples the white-box attacks left robust (the survivors); the check fails
    when it breaks too many of them for a true rate of 5 % (:func:`count_rule`: at least
    :data:`MIN_COUNT`, one-sided binomial p <= 1 %). What Square breaks beyond the white-box attacks
    bounds from above how far Square alone can go below them, and running it only on survivors saves
    5000 queries on examples already broken.

    ``square_broken`` ``[B]`` bool: when the suite itself ran Square (standard settings) after all its
    white-box attacks, on exactly these survivors, its outcome is used instead of a second Square run.
    """
    survivors = whitebox_robust.to(x.device)
    if square_broken is not None:
        only_square = int((survivors & square_broken.to(x.device)).sum())
        source = "Square (the suite's own run)"
    else:
        idx = survivors.nonzero().flatten()
        still = torch.zeros_like(survivors)
        if idx.numel():
            still[idx] = _run(factory, "square", eps, norm, derive_seed(seed, 2), model, x[idx], y[idx])
        only_square = int((survivors & ~still).sum())
        source = "Square"
    m = int(survivors.sum())
    wb_acc = _pct(m, len(y))
    excess = _pct(only_square, len(y))
    rule = count_rule(only_square, m, SQUARE_P0)
    passed = not rule["flagged"]
    return {
        "passed": passed,
        "evidence": f"{source} broke {only_square} of the {m} examples the white-box attacks left robust "
                    f"({excess:.1f} pp of {len(y)}; white-box accuracy {wb_acc:.1f}%; {_rule_text(rule, m, SQUARE_P0)})",
        "values": {"whitebox": wb_acc, "square_excess_pp": excess, "broken_by_square_only": only_square,
                   "survivors": m, "p_value": rule["p_value"], "fail_at": rule["fail_at"], "n": len(y)},
    }


def zero_gradients(model: torch.nn.Module, x: Tensor, y: Tensor) -> Check:
    """Share of the clean-correct examples of ``x`` (those an attack starts from) whose CE input gradient
    is exactly zero, and share of zero entries; fails when there are too many for a true rate of 2 %
    (:func:`count_rule`)."""
    model.eval()
    keep = predict(model, x, False)[0].eq(y)
    x, y = x[keep], y[keep]
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(model(xg), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    zero = g.eq(0).flatten(1)
    k = int(zero.all(1).sum()) if len(y) else 0
    ex_share = _pct(k, len(y)) if len(y) else 0.0
    entry_share = round(100.0 * float(zero.float().mean()), 4) if zero.numel() else 0.0
    rule = count_rule(k, len(y), ZERO_GRAD_P0)
    passed = not rule["flagged"]
    return {
        "passed": passed,
        "evidence": f"{k} of {len(y)} clean-correct examples ({ex_share:.1f}%) have an all-zero input gradient "
                    f"({entry_share:.2f}% of entries are exactly zero; {_rule_text(rule, len(y), ZERO_GRAD_P0)})",
        "values": {"examples_all_zero": ex_share, "entries_zero": entry_share, "count": k, "n": len(y),
                   "p_value": rule["p_value"], "fail_at": rule["fail_at"]},
    }


@torch.no_grad()
def deterministic_routing(model: torch.nn.Module, x: Tensor) -> Check:
    """Two forward passes over ``x``: expert choices and logits must be identical."""
    routed = has_routing(model)
    outs = []
    for _ in range(2):
        if routed:
            from ..adapters.routing import require_adapter

            with require_adapter(model, "routing").trace() as tr:
                logits = model(x)
            outs.append((logits, tr.experts()))
        else:
            outs.append((model(x), None))
    same_logits = bool(torch.equal(outs[0][0], outs[1][0]))
    same_experts = True if not routed else bool(torch.equal(outs[0][1], outs[1][1]))  # type: ignore[arg-type]
    differ = 0 if not routed else int(outs[0][1].ne(outs[1][1]).any(-1).any(0).sum())  # type: ignore[union-attr]
    passed = same_logits and same_experts
    what = "expert choices and logits" if routed else "logits (no MoE layers)"
    return {
        "passed": passed,
        "evidence": f"two passes over {x.shape[0]} examples: {what} "
                    + ("identical" if passed else f"differ (routing differs for {differ} examples, "
                                                   f"logits {'equal' if same_logits else 'differ'})"),
        "values": {"identical_logits": same_logits, "identical_routing": same_experts,
                   "examples_routing_differs": differ, "n": int(x.shape[0])},
    }


def run_checks(model: torch.nn.Module, x: Tensor, y: Tensor, whitebox_robust: Tensor, *, eps: float, norm: str,
               seed: int, factory: Callable[..., Any] | None = None,
               square_broken: Tensor | None = None) -> dict[str, Check]:
    """All four checks on a subset ``x`` ``[B, C, H, W]``, ``y`` ``[B]``; ``whitebox_robust`` ``[B]`` bool
    is the suite's white-box outcome on the same examples; ``square_broken`` ``[B]`` bool, the examples
    the suite's own Square broke (when it ran Square after every white-box attack)."""
    if factory is None:
        from ..attacks import create_attack as factory  # noqa: N813
    return {
        "eps_increase": eps_increase(model, x, y, eps=eps, norm=norm, seed=seed, factory=factory),
        "square_vs_whitebox": square_vs_whitebox(model, x, y, whitebox_robust, eps=eps, norm=norm, seed=seed,
                                                 factory=factory, square_broken=square_broken),
        "zero_gradients": zero_gradients(model, x, y),
        "deterministic_routing": deterministic_routing(model, x),
    }


__all__ = ["ALPHA", "MIN_COUNT", "count_rule", "deterministic_routing", "eps_increase", "run_checks",
           "square_vs_whitebox", "zero_gradients"]
