"""The ``fast`` AutoAttack engine: the standard version's decisions for less work.

What the ``reference`` engine (``AutoAttack.run_standard_evaluation``) does that this engine does not
(``benchmarks/autoattack_profile.py`` measured where the time goes):

* **Memory format.** The model runs with its 4-d weights in ``channels_last`` and its inputs converted
  to ``channels_last`` inside the forward (the gradient goes back in the caller's layout); measured
  1.13-1.20x faster for the whole cascade on this repository's CPU models with every outcome equal.
  The weights are converted in place for the call and restored (values and strides) afterwards.
* **FAB-T stops when it has decided.** :func:`fab_targeted` stops iterating an example once FAB holds
  an adversarial point inside the ball: FAB's later iterations only shrink that point's norm, and
  AutoAttack's decision (misclassified and norm <= eps) is already made. The adversarial point returned
  is therefore the first one found inside the ball, not FAB's minimal-norm point. The clean logits are
  computed once per call instead of twice per target class. (Fusing FAB's no-grad check of each new
  iterate with the next step's gradient forward does not pay: most checks find the iterate beyond the
  boundary, FAB steps it back, and the gradient is needed at the new point; measured slower.)
* **No repeated checks.** ``run_standard_evaluation`` runs its defence checks (randomness, output
  range, ``sys.settrace`` for dynamic code, class count) on every call, i.e. once per attack per batch
  in a cascade; the evaluation runs its own gradient-masking checks once.

APGD-CE, APGD-T and Square are pyautoattack's own ``APGDAttack``, ``APGDAttack_targeted`` and
``SquareAttack`` objects, configured by the reference adapter's ``build`` and called with the same
seeds on the same batches as the reference cascade. FAB's hyperplane projections are pyautoattack's
(``fab_projections``). Everything else follows FAB's reference algorithm (Croce & Hein, 2020) as
pyautoattack implements it: the same target ranks (the 2nd..(n+1)-th highest clean logit), no random
start (one restart, as in the standard version), step ``eta = 1.05``, extrapolation bound
``alpha_max = 0.1`` and backward step ``beta = 0.9``.

``tests/test_autoattack_fast.py`` compares both engines per example; ``benchmarks/autoattack_engines.py``
runs them side by side.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

#: FAB's constants in AutoAttack's standard version (pyautoattack ``FABAttack_PT`` defaults).
FAB_ALPHA_MAX = 0.1
FAB_ETA = 1.05
FAB_BETA = 0.9


class _ToChannelsLast(torch.autograd.Function):
    """``x`` in channels_last for the forward; the gradient goes back contiguous (the caller's layout)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.contiguous()


class ChannelsLast(nn.Module):
    """``model`` called on its input converted to channels_last (4-d inputs; others pass unchanged)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(_ToChannelsLast.apply(x) if x.dim() == 4 else x)


@contextlib.contextmanager
def channels_last_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Convert ``model``'s 4-d parameters and buffers to channels_last for the block, then restore them
    (same values, same strides). Yields the model wrapped in :class:`ChannelsLast`."""
    changed: list[tuple[Tensor, Tensor]] = []
    try:
        for t in [*model.parameters(), *model.buffers()]:
            if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
                old = t.data
                t.data = old.contiguous(memory_format=torch.channels_last)
                changed.append((t, old))
        yield ChannelsLast(model)
    finally:
        for t, old in changed:  # nothing writes weights during an attack: the original storage is current
            t.data = old


def _norms(d: Tensor, norm: str) -> Tensor:
    """Per-row size of ``d`` ``[B, ...]`` -> ``[B]``."""
    flat = d.reshape(d.shape[0], -1)
    return flat.abs().amax(dim=1) if norm == "Linf" else flat.norm(dim=1)


def _targeted_grad(model: nn.Module, x1: Tensor, la: Tensor, la_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits at ``x1``, FAB-T's ``df = logit[target] - logit[label]`` ``[b]`` and its input gradient."""
    im = x1.detach().clone().requires_grad_()
    with torch.enable_grad():
        logits = model(im)
        u = torch.arange(x1.shape[0], device=x1.device)
        diff = -(logits[u, la] - logits[u, la_t])
        (grad,) = torch.autograd.grad(diff.sum(), im)
    return logits.detach(), diff.detach(), grad.detach()


def _fab_step(x1: Tensor, x0: Tensor, df: Tensor, dg: Tensor, norm: str) -> Tensor:
    """One FAB update of the iterates ``x1`` towards the linearised boundary (original point ``x0``)."""
    from pyautoattack.fab_projections import projection_l2, projection_linf

    bs = x1.shape[0]
    shape = [-1, *[1] * (x1.dim() - 1)]
    b = -df + (dg * x1).reshape(bs, -1).sum(dim=-1)
    w = dg.reshape(bs, -1)
    project = projection_linf if norm == "Linf" else projection_l2
    d3 = project(torch.cat((x1.reshape(bs, -1), x0.reshape(bs, -1)), 0), torch.cat((w, w), 0), torch.cat((b, b), 0))
    d1 = d3[:bs].reshape(x1.shape)
    d2 = d3[-bs:].reshape(x1.shape)
    a0 = (d3.abs().amax(dim=1, keepdim=True) if norm == "Linf" else (d3 ** 2).sum(dim=1, keepdim=True).sqrt())
    a0 = torch.clamp(a0, min=1e-8).view(shape)
    a1, a2 = a0[:bs], a0[-bs:]
    alpha = torch.clamp(a1 / (a1 + a2), min=0.0, max=FAB_ALPHA_MAX)
    return ((x1 + FAB_ETA * d1) * (1 - alpha) + (x0 + d2 * FAB_ETA) * alpha).clamp(0.0, 1.0)


@torch.no_grad()
def _fab_single_target(model: nn.Module, x: Tensor, y: Tensor, la_t: Tensor, eps: float, norm: str,
                       n_iter: int) -> tuple[Tensor, Tensor]:
    """FAB towards ``la_t`` from ``x`` (no random start). Returns ``(adv [B, ...], found [B] bool)``:
    ``found`` where an adversarial point inside the ball was found (``adv`` holds it, else ``x``)."""
    bs = x.shape[0]
    x0 = x.clone()
    x1 = x.clone()
    adv = x.clone()
    res = torch.full((bs,), float("inf"), device=x.device)
    active = torch.arange(bs, device=x.device)  # rows still iterated
    for _ in range(n_iter):
        _, df, dg = _targeted_grad(model, x1[active], y[active], la_t[active])
        x1[active] = _fab_step(x1[active], x0[active], df, dg, norm)
        is_adv = model(x1[active]).argmax(1).ne(y[active])
        if bool(is_adv.any()):
            rows = active[is_adv]
            t = _norms(x1[rows] - x0[rows], norm)
            better = t < res[rows]
            adv[rows[better]] = x1[rows[better]]
            res[rows] = torch.minimum(t, res[rows])
            x1[rows] = x0[rows] + (x1[rows] - x0[rows]) * FAB_BETA  # FAB's backward step
            # decided: misclassified inside the ball; FAB's later iterations would only shrink the norm
            active = active[res[active] > eps]
            if active.numel() == 0:
                break
    found = res <= eps
    return torch.where(found.view(-1, *[1] * (x.dim() - 1)), adv, x), found


@torch.no_grad()
def fab_targeted(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "Linf", n_iter: int = 100,
                 n_target_classes: int = 9) -> Tensor:
    """AutoAttack's FAB-T (standard version: one restart, no random start) on ``x`` ``[B, C, H, W]``,
    labels ``y`` ``[B]``: targets the 2nd, 3rd, ... highest clean logit in turn, each on the examples no
    earlier target has fooled. Returns ``x_adv`` (the clean input where no target succeeded)."""
    logits = model(x)
    robust = logits.argmax(1).eq(y)
    ranks = logits.sort(dim=-1)[1]
    out = x.clone()
    for target in range(2, n_target_classes + 2):
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        adv, found = _fab_single_target(model, x[idx], y[idx], ranks[idx, -target], eps, norm, n_iter)
        out[idx[found]] = adv[found]
        robust[idx[found]] = False
    return out


#: The attacks of AutoAttack's standard version, in its order.
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


@torch.no_grad()
def run_cascade(aa: object, model: nn.Module, x: Tensor, y: Tensor, attacks: tuple[str, ...], *, eps: float,
                norm: str, batch_size: int) -> Tensor:
    """AutoAttack's cascade (``run_standard_evaluation`` without its defence checks): each attack in
    ``attacks`` on the examples still robust, in batches of ``batch_size`` in index order, with
    pyautoattack's objects in ``aa`` (an ``AutoAttack`` built for ``model``) and the fused FAB-T.
    Returns ``x_adv`` ``[B, ...]`` (the clean input where nothing succeeded)."""
    robust = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for chunk in torch.arange(x.shape[0], device=x.device).split(batch_size):
        robust[chunk] = model(x[chunk]).argmax(1).eq(y[chunk])
    x_adv = x.clone()
    for name in attacks:
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        for chunk in idx.split(batch_size):
            xb, yb = x[chunk].clone(), y[chunk].clone()
            if name == "apgd-ce":
                aa.apgd.loss = "ce"  # type: ignore[attr-defined]
                aa.apgd.seed = aa.get_seed()  # type: ignore[attr-defined]
                adv = aa.apgd.perturb(xb, yb)  # type: ignore[attr-defined]
            elif name == "apgd-t":
                aa.apgd_targeted.seed = aa.get_seed()  # type: ignore[attr-defined]
                adv = aa.apgd_targeted.perturb(xb, yb)  # type: ignore[attr-defined]
            elif name == "fab-t":
                fab = aa.fab  # type: ignore[attr-defined]
                adv = fab_targeted(model, xb, yb, eps=eps, norm=norm, n_iter=fab.n_iter,
                                   n_target_classes=fab.n_target_classes)
            elif name == "square":
                aa.square.seed = aa.get_seed()  # type: ignore[attr-defined]
                adv = aa.square.perturb(xb, yb)  # type: ignore[attr-defined]
            else:
                raise ValueError(f"the fast engine does not run {name!r}")
            fooled = model(adv).argmax(1).ne(yb)
            robust[chunk[fooled]] = False
            x_adv[chunk[fooled]] = adv[fooled]
    return x_adv
