"""Full-copy experts with top-k gates: ConvMoE (each expert a whole convolution of the layer) and
BlockMoE (each expert a whole residual block), beside the channel-slice experts of :mod:`.layers`.

A top-k MoE layer holds ``N`` complete experts and a gate (global-average-pool of the layer input ->
linear -> ``N`` logits). Each input goes to the ``k`` experts with the largest logits; the layer's output
is the sum of their outputs weighted by

* ``k >= 2``: the softmax over the ``k`` chosen logits (the gate gets the gradient of those weights);
* ``k = 1``: a straight-through gate, exactly 1 in value, whose gradient is that of the chosen expert's
  softmax probability over all ``N`` logits (as the ``softmax`` estimator of the channel MoE).

Options (training mode only, so that evaluation -- and every attack -- sees one deterministic function
of each input that does not depend on the rest of the batch):

* ``noise``: noisy gating, Gaussian noise of this standard deviation added to the logits before the
  top-k choice (the recorded logits are the noisy ones, the ones the choice used);
* ``capacity``: expert capacity factor ``c``; each expert takes at most ``ceil(c * B * k / N)``
  assignments of a batch, first choices before second choices, then batch order. A dropped assignment
  contributes nothing (its weight is 0; the others are not renormalised); an input all of whose
  assignments are dropped gets a zero output from the layer (a ConvMoE layer sits inside a residual
  block, so its identity shortcut still carries the input).

Sparse execution computes every expert only on the inputs routed to it (grouped by expert, results
added back in batch order); ``masked`` execution (the reference) computes every expert on every input
and combines them with the dense ``[B, N]`` weight matrix. They agree in values and gradients; for
BlockMoE in training mode an expert's batch norm normalises over the inputs routed to it in sparse
execution but over the whole batch in the masked reference, so there they agree with running statistics
(eval mode) only.

Routing traces record, per layer, the ``[B, k]`` chosen experts (rank order: largest logit first) and
their ``[B, k]`` weights beside the logits (:class:`~.routing.LayerRecord`); forcing accepts expert
*sets* of any size up to ``N`` (weights: the softmax over the forced experts' logits; one forced expert
has weight exactly 1), which is how fixed-expert evaluation runs each expert alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .routing import LayerRecord, Routed, RoutingContext

#: What one expert is: channel slices (the AdvMoE design, :mod:`.layers`), a whole conv, a whole block.
EXPERT_KINDS = ("channel", "conv", "block")
TOPK_KINDS = ("conv", "block")


@dataclass(frozen=True)
class GateOptions:
    """Top-k gate settings of one model (see the module docstring)."""

    k: int = 1
    noise: float = 0.0
    capacity: float = 0.0


@dataclass
class Selection:
    """One layer's routing in one forward: ``experts`` ``[B, k]`` long (distinct per row), ``weights``
    ``[B, k]`` (with autograd history) and ``keep`` ``[B, k]`` bool (False: dropped by capacity)."""

    experts: Tensor
    weights: Tensor
    keep: Tensor

    def dense_weights(self, n: int) -> Tensor:
        """``[B, N]``: each input's weight per expert (0 for unchosen or dropped experts)."""
        w = self.weights * self.keep.to(self.weights.dtype)
        return w.new_zeros((w.shape[0], n)).scatter_add(1, self.experts, w)


class TopKGate(nn.Module):
    """Global-average-pool of the layer input -> linear -> ``N`` logits."""

    def __init__(self, in_channels: int, experts: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, experts)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[B, C, H, W]`` -> logits ``[B, N]``."""
        return self.fc(x.mean(dim=(2, 3)))


def _forced_set(forced: int | Tensor, b: int, n: int, name: str, device: torch.device) -> Tensor:
    """A forced choice as a ``[B, k']`` long tensor of distinct experts."""
    t = torch.as_tensor(forced, device=device, dtype=torch.long)
    if t.dim() == 0:
        t = t.view(1, 1).expand(b, 1)
    elif t.dim() == 1:
        t = t.view(-1, 1)
    if t.dim() != 2 or t.shape[0] not in (1, b):
        raise ValueError(f"forced experts for layer {name} must be an int, [B] or [B, k]; got shape {tuple(t.shape)}")
    t = t.expand(b, t.shape[1])
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        raise ValueError(f"forced expert out of range [0, {n}) for layer {name}")
    if t.shape[1] > 1 and bool((t.sort(dim=1).values.diff(dim=1) == 0).any()):
        raise ValueError(f"forced experts of layer {name} repeat an expert within one input")
    return t.contiguous()


def capacity_keep(experts: Tensor, n: int, capacity: float) -> Tensor:
    """``[B, k]`` bool: the assignments kept under capacity factor ``capacity`` (each expert at most
    ``ceil(capacity * B * k / N)``, first choices first, then batch order)."""
    b, k = experts.shape
    cap = max(1, math.ceil(capacity * b * k / n))
    order = experts.t().reshape(-1)  # rank-major: every first choice before any second choice
    onehot = F.one_hot(order, n)
    position = (onehot.cumsum(0) * onehot).sum(1) - 1  # how many earlier assignments the expert already has
    return (position < cap).view(k, b).t()


def select(logits: Tensor, ctx: RoutingContext, name: str, opts: GateOptions, training: bool) -> Selection:
    """Top-k routing of one layer (records it in the trace): ``logits`` ``[B, N]`` -> :class:`Selection`."""
    b, n = logits.shape
    forced = None
    if ctx.forced is not None:
        forced = ctx.forced.get(name, ctx.forced.get("*"))
    used = logits
    if forced is not None:
        experts = _forced_set(forced, b, n, name, logits.device)
        weights = torch.softmax(logits.gather(1, experts), dim=1)
        keep = torch.ones_like(experts, dtype=torch.bool)
    else:
        if training and opts.noise > 0:
            used = logits + opts.noise * torch.randn_like(logits)
        top = used.topk(opts.k, dim=1)
        experts = top.indices
        if opts.k == 1:
            p = torch.softmax(used, dim=1).gather(1, experts)
            weights = (p - p.detach()) + 1.0  # exactly 1 in value, the chosen probability's gradient
        else:
            weights = torch.softmax(top.values, dim=1)
        if training and opts.capacity > 0:
            keep = capacity_keep(experts, n, opts.capacity)
        else:
            keep = torch.ones_like(experts, dtype=torch.bool)
    if ctx.trace is not None:
        ctx.trace.append(LayerRecord(name, experts[:, 0], used, experts, weights))
    if torch.jit.is_tracing():
        ctx.traced_scores.append(used)
    return Selection(experts, weights, keep)


class TopKMoE(nn.Module):
    """Common part of the top-k MoE layers: the gate, the options and the mixing of expert outputs."""

    role = "moe"

    def __init__(self, in_channels: int, experts: int, opts: GateOptions, expert_kind: str) -> None:
        super().__init__()
        if not 1 <= opts.k <= experts:
            raise ValueError(f"top-k needs 1 <= k <= experts ({experts}), got k={opts.k}")
        self.in_channels, self.experts, self.opts, self.expert_kind = in_channels, experts, opts, expert_kind
        self.router = TopKGate(in_channels, experts)
        self.layer_name = ""

    @property
    def k(self) -> int:
        return self.opts.k

    def _expert(self, e: int, x: Tensor, ctx: RoutingContext) -> Tensor:
        raise NotImplementedError

    def _mix(self, r: Routed) -> Tensor:
        """Route ``r`` and return the weighted sum of the chosen experts' outputs ``[B, ...]``."""
        ctx, x = r.ctx, r.x
        sel = select(self.router(x), ctx, self.layer_name, self.opts, self.training)
        n, b = self.experts, x.shape[0]
        if ctx.execution == "masked":
            w = sel.dense_weights(n)  # [B, N]
            out = None
            for e in range(n):
                y = self._expert(e, x, ctx)
                term = y * w[:, e].view(-1, *([1] * (y.dim() - 1)))
                out = term if out is None else out + term
            assert out is not None
            return out
        need_gate = sel.weights.requires_grad
        out: Tensor | None = None
        for e in range(n):
            hit = (sel.experts == e) & sel.keep  # [B, k]
            rows = hit.any(dim=1).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            full = rows.numel() == b
            xe = x if full else x.index_select(0, rows)
            y = self._expert(e, xe, ctx)
            we = (sel.weights * hit.to(sel.weights.dtype)).sum(dim=1)
            if need_gate or sel.experts.shape[1] > 1:  # a single expert's weight is exactly 1
                we = we if full else we.index_select(0, rows)
                y = y * we.view(-1, *([1] * (y.dim() - 1)))
            if out is None:
                out = y.new_zeros((b,) + tuple(y.shape[1:]))
            out = out + y if full else out.index_add(0, rows, y)
        if out is None:  # capacity dropped every assignment of the batch (cannot happen: each expert keeps >= 1)
            raise RuntimeError(f"layer {self.layer_name}: no expert computed any input")
        return out


class TopKConv(TopKMoE):
    """ConvMoE layer: ``N`` complete convolutions ``[C_out, C_in, k, k]`` (no bias: BN follows)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, *, experts: int, opts: GateOptions) -> None:
        super().__init__(in_channels, experts, opts, "conv")
        self.out_channels, self.kernel_size, self.stride = out_channels, kernel_size, stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.expert_width = out_channels
        self.weight = nn.Parameter(torch.empty(experts, out_channels, in_channels, kernel_size, kernel_size))
        for e in range(experts):
            nn.init.kaiming_normal_(self.weight.data[e], mode="fan_out", nonlinearity="relu")

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, s={self.stride}, "
                f"experts={self.experts}, top_k={self.k}, noise={self.opts.noise:g}, capacity={self.opts.capacity:g}")

    def _expert(self, e: int, x: Tensor, ctx: RoutingContext) -> Tensor:
        return F.conv2d(x, self.weight[e], None, self.stride, self.padding)

    def forward(self, r: Routed, out_expert: Tensor | None = None, bn: nn.Module | None = None) -> Routed:
        """``r``: dense routed ``[B, C_in, H, W]`` -> dense ``[B, C_out, H', W']`` (then ``bn`` if given)."""
        if r.expert is not None:
            raise RuntimeError("a ConvMoE layer reads a dense activation")
        out = Routed(self._mix(r), None, self.out_channels, 1, r.ctx)
        return out if bn is None else bn(out)


class TopKBlock(TopKMoE):
    """BlockMoE layer: ``N`` complete residual blocks (each with its own shortcut and batch norms)."""

    def __init__(self, in_channels: int, out_channels: int, blocks: list[nn.Module], *, opts: GateOptions) -> None:
        super().__init__(in_channels, len(blocks), opts, "block")
        self.out_channels = self.expert_width = out_channels
        self.blocks = nn.ModuleList(blocks)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, experts={self.experts}, top_k={self.k}, "
                f"noise={self.opts.noise:g}, capacity={self.opts.capacity:g}")

    def _expert(self, e: int, x: Tensor, ctx: RoutingContext) -> Tensor:
        return self.blocks[e](Routed(x, None, x.shape[1], 1, ctx)).x

    def forward(self, r: Routed) -> Routed:
        if r.expert is not None:
            raise RuntimeError("a BlockMoE layer reads a dense activation")
        return Routed(self._mix(r), None, self.out_channels, 1, r.ctx)


__all__ = ["EXPERT_KINDS", "TOPK_KINDS", "GateOptions", "Selection", "TopKGate", "TopKMoE", "TopKConv",
           "TopKBlock", "select", "capacity_keep"]
