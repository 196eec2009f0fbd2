"""The routed-activation representation shared by every layer.

An MoE model's activations are *sparse by channel group*: after an MoE layer, input ``b`` only has the
channels of its chosen expert ``e_b`` (a contiguous slice of width ``full // groups``). A :class:`Routed`
holds such an activation in one of two executions:

* ``sparse``  -- ``x`` is compact: ``[B, full // groups, H, W]`` for routed tensors, the channels of
  expert ``expert[b]`` only. Layers compute only those channels (the real compute saving).
* ``masked``  -- ``x`` is full width ``[B, full, H, W]`` with zeros outside the expert's slice. Layers
  compute every expert and mask: the naive implementation (what the paper's public code does), kept as
  the reference for equivalence tests and the baseline of the speed benchmarks.

``expert is None`` means a dense activation (all ``full`` channels active), e.g. after the stem.

The :class:`RoutingContext` travels with the activation through one forward pass and holds what the
whole model shares: the execution, the shared router's scores, the routing trace being recorded,
and forced expert choices (the soft relaxation of adaptive attacks is built from forced pathways in
:mod:`robustmoe_bench.attacks.adaptive`: a single masked forward cannot carry it, because batch norm
re-masks and ReLU's kink at zero stop every gradient through the unchosen experts' channels).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

EXECUTIONS = ("sparse", "masked")


@dataclass
class LayerRecord:
    """What one MoE layer decided in one forward pass.

    ``expert``: ``[B]`` long, chosen expert per input (top-k layers: the first choice). ``logits``:
    ``[B, N]`` router scores (not detached, so router-targeted attacks can differentiate them). ``name``:
    the layer's qualified module name. Top-k layers (:mod:`.topk`) also record ``experts_k`` ``[B, k]``
    long (the chosen experts, largest logit first) and ``weights`` ``[B, k]`` (their gate weights, with
    autograd history); for top-1 channel layers both are ``None``.
    """

    name: str
    expert: Tensor
    logits: Tensor
    experts_k: Tensor | None = None
    weights: Tensor | None = None

    @property
    def expert_set(self) -> Tensor:
        """``[B, k]`` long, the chosen experts sorted ascending (``k = 1``: ``expert[:, None]``)."""
        e = self.expert.unsqueeze(1) if self.experts_k is None else self.experts_k
        return e.sort(dim=1).values


@dataclass
class RoutingContext:
    """Per-forward state shared by all layers (see module docstring)."""

    execution: str = "sparse"
    shared_logits: Tensor | None = None
    trace: list[LayerRecord] | None = None
    # Forced routing: layer name -> [B] expert indices (or one int for every input); the key "*"
    # applies to every MoE layer. Forced choices carry no router gradient.
    forced: dict[str, Tensor | int] | None = None
    # Fold eval-mode batch norm into the preceding conv (sparse execution only; see layers.conv_bn).
    fold_bn: bool = True
    # Straight-through estimator of the hard routing (see layers.STE_DESIGNS).
    ste: str = "identity"
    # Router scores seen by a traced forward (FLOP counting): see RoutedNet.forward.
    traced_scores: list[Tensor] = field(default_factory=list)
    _cache: dict = field(default_factory=dict)


@dataclass
class Routed:
    """An activation plus its channel layout (see module docstring).

    ``x``: ``[B, C, H, W]`` or ``[B, C]``; ``expert``: ``[B]`` long or ``None`` (dense);
    ``full``: channel count of the full-width tensor; ``groups``: number of experts N of the slices.
    """

    x: Tensor
    expert: Tensor | None
    full: int
    groups: int
    ctx: RoutingContext

    @property
    def width(self) -> int:
        return self.full // self.groups

    def with_x(self, x: Tensor) -> "Routed":
        return Routed(x, self.expert, self.full, self.groups, self.ctx)

    def apply(self, fn: Callable[[Tensor], Tensor]) -> "Routed":
        """Apply a channel-wise op (ReLU, pooling) that maps zeros to zeros."""
        return self.with_x(fn(self.x))

    def to_full(self) -> Tensor:
        """The full-width tensor (zeros outside each input's slice)."""
        if self.expert is None or self.ctx.execution == "masked":
            return self.x
        return scatter_slices(self.x, self.expert, self.groups)


def channel_mask(expert: Tensor, full: int, groups: int, dtype: torch.dtype) -> Tensor:
    """``[B, full]`` 0/1 mask of each input's channel slice."""
    width = full // groups
    owner = torch.arange(full, device=expert.device) // width  # expert owning each channel
    return (owner.unsqueeze(0) == expert.unsqueeze(1)).to(dtype)


def expand_mask(mask: Tensor, x: Tensor) -> Tensor:
    """Broadcast a ``[B, C]`` mask to ``x``'s shape ``[B, C, ...]``."""
    return mask.view(*mask.shape, *([1] * (x.dim() - 2)))


def groups_of(expert: Tensor, groups: int) -> list[tuple[int, Tensor]]:
    """Non-empty (expert, batch indices) pairs. One device sync for all groups."""
    counts = torch.bincount(expert, minlength=groups).tolist()
    order = torch.argsort(expert, stable=True)
    out, start = [], 0
    for e, n in enumerate(counts):
        if n:
            out.append((e, order[start:start + n]))
        start += n
    return out


def pair_groups(e_in: Tensor, e_out: Tensor, groups: int) -> list[tuple[int, int, Tensor]]:
    """Non-empty (expert_in, expert_out, batch indices) triples."""
    key = e_in * groups + e_out
    return [(k // groups, k % groups, idx) for k, idx in groups_of(key, groups * groups)]


def _put_rows(out: Tensor, idxs: tuple[Tensor, ...], vals: tuple[Tensor | None, ...]) -> Tensor:
    """Write ``vals[k]`` into rows ``idxs[k]`` of ``out`` (``None`` values are skipped); returns ``out``."""
    for i, v in zip(idxs, vals):
        if v is not None:
            out[i] = v  # index_put: measured faster than index_copy_ on CPU
    return out


class _SplitRows(torch.autograd.Function):
    """Rows ``x[idx_k]`` for a partition ``idx_1..idx_K`` of the batch; backward writes every group's
    gradient into ONE full-size tensor (autograd's own index/slice backward would allocate and sum a
    full-size zero tensor per group)."""

    @staticmethod
    def forward(ctx, x: Tensor, *idxs: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.save_for_backward(*idxs)
        ctx.batch_shape = x.shape
        return tuple(x.index_select(0, i) for i in idxs)

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        idxs = ctx.saved_tensors
        ref = next(g for g in grads if g is not None)
        covered = all(g is not None for g in grads)
        out = ref.new_empty(ctx.batch_shape) if covered else ref.new_zeros(ctx.batch_shape)
        return (_put_rows(out, idxs, grads),) + (None,) * len(idxs)


class _MergeRows(torch.autograd.Function):
    """Inverse of :class:`_SplitRows`: group results ``vals[k]`` written to rows ``idx_k`` of one tensor;
    backward gathers each group's rows of the gradient (no full-size tensor per group)."""

    @staticmethod
    def forward(ctx, batch: int, idxs: tuple[Tensor, ...], *vals: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(*idxs)
        return _put_rows(vals[0].new_empty((batch,) + tuple(vals[0].shape[1:])), idxs, vals)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        idxs = ctx.saved_tensors
        return (None, None) + tuple(grad.index_select(0, i) if ctx.needs_input_grad[2 + k] else None
                                    for k, i in enumerate(idxs))


def split_rows(x: Tensor, idxs: list[Tensor]) -> list[Tensor]:
    """The rows of each group, ``[x[idx] for idx in idxs]``; ``idxs`` partition the batch of ``x``.

    A group holding the whole batch is ``x`` itself (a group of :func:`groups_of` lists its indices in
    ascending order, so it is exactly ``arange(B)``). Row gathers use ``index_select`` (measured faster
    than advanced indexing on CPU) and one full-size gradient in backward (:class:`_SplitRows`).
    """
    if len(idxs) == 1 and idxs[0].numel() == x.shape[0]:
        return [x]
    return list(_SplitRows.apply(x, *idxs))


def merge_rows(parts: list[tuple[Tensor, Tensor]], batch: int) -> Tensor:
    """Put per-group results ``(indices, values)`` back in batch order (differentiable).

    The groups partition the batch, so every row is written exactly once, straight into one
    preallocated tensor (no concatenation followed by a permuting gather).
    """
    if len(parts) == 1 and parts[0][0].numel() == batch:
        return parts[0][1]
    idxs = tuple(i for i, _ in parts)
    return _MergeRows.apply(batch, idxs, *(v for _, v in parts))


def scatter_slices(x: Tensor, expert: Tensor, groups: int) -> Tensor:
    """Compact ``[B, w, ...]`` -> full ``[B, groups*w, ...]`` with zeros outside each slice."""
    b, w = x.shape[0], x.shape[1]
    full = x.new_zeros((b, groups, w) + tuple(x.shape[2:]))
    idx = expert.view(b, 1, 1, *([1] * (x.dim() - 2))).expand(b, 1, w, *x.shape[2:])
    full = full.scatter(1, idx, x.unsqueeze(1))
    return full.view(b, groups * w, *x.shape[2:])


def gather_slices(x_full: Tensor, expert: Tensor, groups: int) -> Tensor:
    """Full ``[B, groups*w, ...]`` -> compact ``[B, w, ...]``: each input's own slice."""
    b, c = x_full.shape[0], x_full.shape[1]
    w = c // groups
    v = x_full.view(b, groups, w, *x_full.shape[2:])
    idx = expert.view(b, 1, 1, *([1] * (x_full.dim() - 2))).expand(b, 1, w, *x_full.shape[2:])
    return v.gather(1, idx).squeeze(1)
