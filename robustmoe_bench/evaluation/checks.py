"""Gradient-masking checks: flags that say when a robustness number should not be trusted.

Each check returns ``{"passed": bool, "evidence": str, "values": {...}}``. A failed check is reported in
the results (``flags``) and makes them ``unreliable``; it never changes or hides a number.

* ``eps_increase``: PGD accuracy must fall towards 0 as the radius grows; at 16x the radius it must
  be below 5 % (an L-inf ball that large covers most of the image box, so only masked gradients keep
  a model "robust").
* ``square_vs_whitebox``: gradient-free Square must not beat the white-box attacks by more than 1
  percentage point on the same examples (if it does, the gradients mislead the white-box attacks).
  Measured as what Square breaks beyond the white-box attacks (see :func:`square_vs_whitebox`).
* ``zero_gradients``: share of examples whose cross-entropy input gradient is exactly zero everywhere.
  A differentiable classifier has an all-zero gradient only where its loss is flat (a saturated
  softmax, a piecewise-constant component): a gradient attack then cannot start there. Well-behaved
  models give ~0 %, so the threshold (> 10 % of examples) is far above noise and still catches masking
  on a minority of inputs. The share of exactly-zero entries is reported as evidence.
* ``deterministic_routing``: two passes over the same inputs give identical expert choices and
  logits (randomised routing would make every attack number depend on luck).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..attacks.base import check_in_ball
from .suites import derive_seed, has_routing, predict

EPS_MULTIPLIERS = (1, 2, 4, 8, 16)
EPS_INCREASE_MAX_ACC = 5.0
SQUARE_MARGIN_PP = 1.0
ZERO_GRAD_MAX_SHARE = 10.0
EPS_CHECK_STEPS = 20
#: L-inf radii are capped just below 1: the attacks refuse eps >= 1 (pixel units), and 0.999 already
#: reaches almost every point of the [0, 1] box.
LINF_CAP = 0.999

Check = dict[str, Any]


def _pct(count: int, total: int) -> float:
    return round(100.0 * count / total, 4) if total else 0.0


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
    """PGD-20 accuracy on ``x`` ``[B, C, H, W]`` at eps x (1, 2, 4, 8, 16); passes if the last is < 5 %.

    L-inf radii are capped at :data:`LINF_CAP` (nearly the whole [0, 1] box); the radii used are recorded."""
    accs: dict[str, float] = {}
    radii: dict[str, float] = {}
    for m in EPS_MULTIPLIERS:
        e = min(eps * m, LINF_CAP) if norm == "Linf" else eps * m
        radii[f"x{m}"] = round(e, 6)
        ok = _run(factory, "pgd", e, norm, derive_seed(seed, 1, m), model, x, y, steps=EPS_CHECK_STEPS)
        accs[f"x{m}"] = _pct(int(ok.sum()), len(y))
    last = accs[f"x{EPS_MULTIPLIERS[-1]}"]
    passed = last < EPS_INCREASE_MAX_ACC
    ev = ", ".join(f"{k} {v:.1f}%" for k, v in accs.items())
    return {
        "passed": passed,
        "evidence": f"PGD-{EPS_CHECK_STEPS} accuracy on {len(y)} examples as eps grows: {ev} "
                    f"({'<' if passed else '>='} {EPS_INCREASE_MAX_ACC:g}% at x{EPS_MULTIPLIERS[-1]})",
        "values": {"accuracy": accs, "eps": radii, "n": len(y)},
    }


def square_vs_whitebox(model: torch.nn.Module, x: Tensor, y: Tensor, whitebox_robust: Tensor, *, eps: float,
                       norm: str, seed: int, factory: Callable[..., Any],
                       square_broken: Tensor | None = None) -> Check:
    """Does gradient-free Square beat the white-box attacks? ``whitebox_robust`` ``[B]`` bool: robust
    under every white-box attack of the suite.

    The rule is "Square's accuracy is not more than 1 pp below the white-box accuracy". Square runs
    only on the examples the white-box attacks left robust, and the check fails if it breaks more than
    1 pp of ``x`` there. That excess bounds the gap from above (Square alone can be below white-box by
    at most what it breaks beyond white-box), so the check is never laxer than the rule, and it saves
    running 5000 queries on examples that are already broken.

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
    wb_acc = _pct(int(survivors.sum()), len(y))
    excess = _pct(only_square, len(y))
    passed = excess <= SQUARE_MARGIN_PP
    return {
        "passed": passed,
        "evidence": f"{source} broke {only_square} of the {int(survivors.sum())} examples the white-box attacks left "
                    f"robust ({excess:.1f} pp of {len(y)}; white-box accuracy {wb_acc:.1f}%; allowed {SQUARE_MARGIN_PP:g} pp)",
        "values": {"whitebox": wb_acc, "square_excess_pp": excess, "broken_by_square_only": only_square,
                   "n": len(y)},
    }


def zero_gradients(model: torch.nn.Module, x: Tensor, y: Tensor) -> Check:
    """Share of the clean-correct examples of ``x`` (those an attack starts from) whose CE input gradient
    is exactly zero, and share of zero entries; passes if <= 10 % of examples."""
    model.eval()
    keep = predict(model, x, False)[0].eq(y)
    x, y = x[keep], y[keep]
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(model(xg), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    zero = g.eq(0).flatten(1)
    ex_share = _pct(int(zero.all(1).sum()), len(y)) if len(y) else 0.0
    entry_share = round(100.0 * float(zero.float().mean()), 4) if zero.numel() else 0.0
    passed = ex_share <= ZERO_GRAD_MAX_SHARE
    return {
        "passed": passed,
        "evidence": f"{ex_share:.1f}% of {len(y)} clean-correct examples have an all-zero input gradient "
                    f"({entry_share:.2f}% of entries are exactly zero); allowed {ZERO_GRAD_MAX_SHARE:g}%",
        "values": {"examples_all_zero": ex_share, "entries_zero": entry_share, "n": len(y)},
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


__all__ = ["deterministic_routing", "eps_increase", "run_checks", "square_vs_whitebox", "zero_gradients"]
