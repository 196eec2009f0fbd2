"""Routed layers: one MoE convolution (sparse dispatch + masked reference), expert-sliced batch norm,
residual add, classifier, routers, and the Hydra channel mask.

Every backbone is written with these layers only, so Dense, S-Dense, Sparse and MoE share one code
path (see :mod:`robustmoe_bench.models.routing` for the activation layout).

Two expert layouts (``LAYOUTS``):

* ``compact`` (the paper's public code): an MoE conv with ``N`` experts of width ``w`` holds a weight
  ``[N*w, C_in, k, k]``; expert ``e`` is the rows ``[e*w, (e+1)*w)``. Its output keeps only the chosen
  expert's ``w`` channels, compactly, so every later layer (batch norm, the next MoE conv, 1x1
  shortcuts, the classifier) reads the same ``w``-channel tensor whichever expert produced it, and is
  shared by all experts. Activations are never "on a slice": a residual add is an ordinary add.
* ``slice``: an MoE conv has weight ``[C_out, C_in, k, k]`` split into ``N`` output slices (the
  experts). An input that arrives on slice ``e_in`` and is routed to expert ``e_out`` uses the block
  ``W[e_out slice, e_in slice]``: exactly what "compute every expert on the masked input, then mask
  the output" computes, but without the wasted work. Batch norm after it keeps per-channel statistics
  over the inputs that use that channel.

Routing semantics (exact in both executions, sparse and masked):

* Straight-through routing (``STE_DESIGNS``): the forward pass uses the hard argmax; the chosen
  expert's output is multiplied by a gate whose value is exactly 1. ``identity`` (the public code's
  estimator, the default) gives the chosen router score the gradient of that gate unchanged
  (``d gate / d score_chosen = 1``, the other scores get none); ``softmax`` gives the scores the gradient
  of ``softmax(scores)[chosen]``. Either needs only the chosen expert, which keeps training sparse too.
* A residual add never drops its identity shortcut. In ``compact`` it is a plain add. In ``slice`` the
  shortcut's active channels are moved onto the main branch's slice (channel ``j`` of the input's
  slice is added to channel ``j`` of the output's slice), so the residual stream follows the routing;
  a dense shortcut (e.g. the stem's output) contributes its channels that lie on the main slice.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .routing import (
    LayerRecord,
    Routed,
    RoutingContext,
    channel_mask,
    expand_mask,
    gather_slices,
    groups_of,
    merge_rows,
    pair_groups,
    scatter_slices,
    split_rows,
)

ROLES = ("dense", "moe", "follow")
LAYOUTS = ("compact", "slice")
#: straight-through estimators of the hard argmax: the chosen score gets the gate's gradient unchanged
#: (``identity``, the paper's public code) or through ``softmax(scores)[chosen]`` (``softmax``)
STE_DESIGNS = ("identity", "softmax")


class GateRouter(nn.Module):
    """``layer`` router: global-average-pool of the MoE layer's input -> linear -> N scores."""

    def __init__(self, in_channels: int, experts: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, experts)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, r: Routed) -> Tensor:
        """``r``: routed input ``[B, C, H, W]`` -> logits ``[B, N]``."""
        # sum, then divide the small [B, C] result: mean()'s backward would materialise a full-size
        # tensor (grad / HW) for every MoE layer; the sum's backward is an expanded view. A traced
        # forward (fvcore FLOP counting) keeps mean(), the op whose cost the FLOP convention counts.
        if torch.jit.is_tracing():
            pooled = r.x.mean(dim=(2, 3))
        else:
            pooled = r.x.sum(dim=(2, 3)) / (r.x.shape[2] * r.x.shape[3])
        if r.expert is not None and r.ctx.execution == "sparse":
            pooled = scatter_slices(pooled, r.expert, r.groups)
        return self.fc(pooled)


class SharedRouter(nn.Module):
    """``shared`` router: a small CNN on the (normalised) image whose N scores every MoE layer uses."""

    def __init__(self, in_channels: int, experts: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(2 * width, experts)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, C, H, W]`` -> logits ``[B, N]``."""
        return self.fc(self.features(x))


class _OptionABlock(nn.Module):
    """Basic residual block whose shortcut, when the shape changes, subsamples and zero-pads channels
    (no parameters: "option A" of He et al., 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        sc = x
        if self.stride != 1 or self.pad:
            sc = x[:, :, ::self.stride, ::self.stride] if self.stride != 1 else x
            sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, (self.pad + 1) // 2))
        return F.relu(out + sc)


class ResNetRouter(nn.Module):
    """``resnet`` router: the router network of the paper's public code, a small CIFAR-style ResNet on
    the (normalised) image -- a 3x3 conv to 16 channels, three stages of ``blocks`` basic blocks
    (16, 32, 64 channels; strides 1, 2, 2; parameter-free shortcuts), global average pool, linear -> N.
    Run once per forward; every MoE layer uses its scores."""

    def __init__(self, in_channels: int, experts: int, blocks: int = 3, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c = widths[0]
        stages = []
        for i, w in enumerate(widths):
            layers = []
            for j in range(blocks):
                layers.append(_OptionABlock(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(c, experts)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, C, H, W]`` -> logits ``[B, N]``."""
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class ChannelMask(nn.Module):
    """Hydra-style structured mask: one importance score per output channel, top-``keep`` kept.

    While ``learning`` the top-k selection is straight-through (the forward uses the hard mask, the
    gradient reaches the scores); afterwards the mask is a fixed buffer.
    """

    def __init__(self, channels: int, keep: int) -> None:
        super().__init__()
        if not 1 <= keep <= channels:
            raise ValueError(f"keep must be in [1, {channels}], got {keep}")
        self.keep = keep
        self.scores = nn.Parameter(torch.ones(channels))
        self.register_buffer("mask", torch.zeros(channels))
        self.mask[:keep] = 1.0
        self.learning = False

    @torch.no_grad()
    def init_from_weight(self, weight: Tensor) -> None:
        """Scores proportional to each output filter's L2 norm (Hydra's initialisation)."""
        norms = weight.flatten(1).norm(dim=1)
        self.scores.copy_(norms / norms.max().clamp_min(1e-12))
        self.freeze()

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix the mask to the current top-k scores."""
        hard = torch.zeros_like(self.scores)
        hard[self.scores.topk(self.keep).indices] = 1.0
        self.mask.copy_(hard)

    def current(self) -> Tensor:
        if not self.learning:
            return self.mask
        hard = torch.zeros_like(self.scores)
        hard[self.scores.topk(self.keep).indices] = 1.0
        return hard + self.scores - self.scores.detach()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.current().view(1, -1, *([1] * (x.dim() - 2)))


class _UnitGate(torch.autograd.Function):
    """``y * gate`` for a straight-through gate ``[B]`` whose value is exactly 1 (see :func:`_select`).

    Forward returns ``y`` itself (no pass over it); backward passes the incoming gradient to ``y``
    unchanged (it is multiplied by 1) and gives the gate ``sum(grad * y)`` per input. Same values and
    gradients as the multiplication, two passes over the activation fewer.
    """

    @staticmethod
    def forward(ctx, y: Tensor, gate: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(y)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None]:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        g_gate = None
        if ctx.needs_input_grad[1]:
            g_gate = (grad * y).flatten(1).sum(1)  # measured several times faster than bmm on CPU
        return grad, g_gate


def apply_gate(y: Tensor, gate: Tensor) -> Tensor:
    """``y`` ``[B, ...]`` times the unit straight-through gate ``[B]`` (value 1, router gradient only)."""
    return _UnitGate.apply(y, gate)


def _select(logits: Tensor, r: Routed, name: str) -> tuple[Tensor, Tensor | None]:
    """Route: returns (expert ``[B]``, gate) where gate is ``[B]`` (sparse) or ``[B, N]`` (masked)."""
    ctx = r.ctx
    forced = None
    if ctx.forced is not None:
        forced = ctx.forced.get(name, ctx.forced.get("*"))
    b, n = logits.shape
    if forced is not None:
        expert = torch.as_tensor(forced, device=logits.device, dtype=torch.long).expand(b).clone()
        if int(expert.min()) < 0 or int(expert.max()) >= n:
            raise ValueError(f"forced expert out of range [0, {n}) for layer {name}")
        gate = None
    else:
        expert = logits.argmax(dim=1)
        if ctx.ste == "softmax":
            src = torch.softmax(logits, dim=1)
        elif ctx.ste == "identity":
            src = logits
        else:
            raise ValueError(f"unknown straight-through estimator {ctx.ste!r}; known: {', '.join(STE_DESIGNS)}")
        s_sel = src.gather(1, expert[:, None]).squeeze(1)
        ste = (s_sel - s_sel.detach()) + 1.0  # exactly 1 in value (s - s = 0), gradient of s
        gate = ste if ctx.execution == "sparse" else F.one_hot(expert, n).to(logits.dtype) * ste[:, None]
    if ctx.trace is not None:
        ctx.trace.append(LayerRecord(name, expert, logits))
    if torch.jit.is_tracing():
        ctx.traced_scores.append(logits)
    return expert, gate


class RoutedConv2d(nn.Module):
    """Convolution on routed activations.

    ``role``: ``dense`` (ordinary conv; output dense), ``moe`` (routes each input to one of ``experts``
    experts, with a ``layer`` gate or the model's one router network), ``follow`` (``slice`` layout only:
    output on a slice given by the caller, e.g. a projection shortcut following its block's expert).
    No bias (every conv is followed by BN).

    ``layout`` (``moe`` role): ``slice`` -- ``out_channels`` is the full width, split into ``experts``
    slices; ``compact`` -- ``out_channels`` is ONE expert's width ``w``, the weight holds ``experts * w``
    rows, and the output is the chosen expert's ``w`` channels (a dense activation). Either way
    :attr:`out_channels` afterwards is the number of weight rows (all experts) and :attr:`expert_width`
    the channels one expert computes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        *,
        experts: int = 1,
        role: str = "dense",
        router: str | None = None,
        mask_keep: int | None = None,
        layout: str = "slice",
    ) -> None:
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.compact = role == "moe" and layout == "compact"
        if role == "follow" and layout == "compact":
            raise ValueError("a 'follow' conv exists only in the slice layout")
        if self.compact:
            out_channels *= experts  # one row block per expert
        elif role in ("moe", "follow") and out_channels % experts:
            raise ValueError(f"{out_channels} output channels do not split into {experts} experts")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.expert_width = out_channels // experts if role in ("moe", "follow") else out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.experts, self.role, self.router_design = experts, role, router
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        # fan_out of ONE expert's conv (the conv an input actually meets), as for the Dense layer
        fan_out = self.expert_width * kernel_size * kernel_size if self.compact else None
        if fan_out is None:
            nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        else:
            nn.init.normal_(self.weight, std=math.sqrt(2.0 / fan_out))
        self.router: GateRouter | None = None
        if role == "moe":
            if router not in ("layer", "shared", "resnet"):
                raise ValueError(f"router must be 'layer', 'shared' or 'resnet', got {router!r}")
            if router == "layer":
                self.router = GateRouter(in_channels, experts)
        self.channel_mask = ChannelMask(out_channels, mask_keep) if mask_keep is not None else None
        self.layer_name = ""  # set by the model once the module tree is complete

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, s={self.stride}, role={self.role}"
        if self.role == "moe":
            s += f", experts={self.experts}, router={self.router_design}"
            s += f", layout={'compact' if self.compact else 'slice'}"
        if self.channel_mask is not None:
            s += f", keep={self.channel_mask.keep}"
        return s

    def _conv(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding)

    def forward(self, r: Routed, out_expert: Tensor | None = None, bn: "RoutedBatchNorm2d | None" = None) -> Routed:
        """``r``: routed ``[B, C_in(, compact), H, W]`` -> routed output ``[B, C_out(, compact), H', W']``.

        ``bn``: the batch norm that follows this conv, applied to the output. When it uses running
        statistics (eval mode) and the execution is sparse, it is folded into the convolution (see
        :func:`conv_bn`) instead of run as a separate pass.
        """
        ctx = r.ctx
        gate = None
        if self.role == "moe":
            if self.router is not None:
                logits = self.router(r)
            else:
                if ctx.shared_logits is None:
                    raise RuntimeError("shared-router MoE layer called without shared router scores")
                logits = ctx.shared_logits
            e_out, gate = _select(logits, r, self.layer_name)
        elif self.role == "follow":
            if out_expert is None:
                raise RuntimeError("a 'follow' conv needs the expert of the branch it follows")
            e_out = out_expert
        else:
            e_out = None
        n = self.experts
        if self.compact:
            return self._forward_compact(r, e_out, gate, bn)
        groups_out = n if e_out is not None else r.groups

        if ctx.execution == "masked":
            y = self._conv(r.x, self.weight)
            if e_out is not None:
                if gate is None:
                    m = channel_mask(e_out, self.out_channels, n, y.dtype)
                else:
                    m = gate.repeat_interleave(self.out_channels // n, dim=1)
                y = y * expand_mask(m, y)
            if self.channel_mask is not None:
                y = self.channel_mask(y)
            out = Routed(y, e_out, self.out_channels, groups_out, ctx)
            return out if bn is None else bn(out)

        fold = bn is not None and bn.foldable(ctx) and not (self.channel_mask is not None and self.channel_mask.learning)
        w = self.weight
        scale = shift = None
        if fold:
            assert bn is not None
            scale, shift = bn.eval_affine()
            if self.channel_mask is not None:  # BN(mask(conv)) = conv with masked, scaled filters + shift
                scale = scale * self.channel_mask.current()
        # The straight-through gate is 1 in value; it only matters for its gradient, so skip the pass
        # over the output when no gradient can flow (inference). With a folded BN, the gate must
        # multiply the conv output *before* the shift (as it does before BN), so the shift is added
        # after the gate instead of as the conv bias.
        gate_grad = gate is not None and gate.requires_grad

        def block(x: Tensor, eo: int | None, ei: int | None, idx: Tensor | None) -> Tensor:
            """Convolve ``x`` with the weight block (output slice ``eo``, input slice ``ei``; None = all)."""
            rows = slice(None) if eo is None else slice(eo * wo, (eo + 1) * wo)
            wb = w[rows] if ei is None else w[rows, ei * wi:(ei + 1) * wi]
            if not fold:
                return self._conv(x, wb)
            sc, sh = scale[rows], shift[rows]  # type: ignore[index]
            wb = wb * sc.view(-1, 1, 1, 1)
            if not gate_grad:
                return F.conv2d(x, wb, sh, self.stride, self.padding)
            g = gate if idx is None else gate[idx]  # type: ignore[index]
            return apply_gate(self._conv(x, wb), g) + sh.view(1, -1, 1, 1)

        e_in = r.expert
        wi = self.in_channels // r.groups if e_in is not None else 0
        wo = self.out_channels // n if e_out is not None else 0
        if e_in is None and e_out is None:
            y = block(r.x, None, None, None)
        else:
            # (input slice, output expert, batch indices) per non-empty group; None = all channels
            if e_in is None:
                plan = [(None, eo, idx) for eo, idx in groups_of(e_out, n)]
            elif e_out is None:
                plan = [(ei, None, idx) for ei, idx in groups_of(e_in, r.groups)]
            else:
                if r.groups != n:
                    raise RuntimeError("input and output expert counts differ")
                plan = pair_groups(e_in, e_out, n)
            xs = split_rows(r.x, [idx for _, _, idx in plan])
            parts = [(idx, block(xg, eo, ei, idx)) for (ei, eo, idx), xg in zip(plan, xs)]
            y = merge_rows(parts, r.x.shape[0])
        if gate_grad and not fold:
            y = apply_gate(y, gate)  # type: ignore[arg-type]
        if self.channel_mask is not None and not fold:
            y = self.channel_mask(y)
        out = Routed(y, e_out, self.out_channels, groups_out, ctx)
        return out if (bn is None or fold) else bn(out)


    def _forward_compact(self, r: Routed, e_out: Tensor, gate: Tensor | None,
                         bn: "RoutedBatchNorm2d | None") -> Routed:
        """``compact`` layout: dense ``[B, C_in, H, W]`` -> the chosen expert's ``[B, w, H, W]`` (dense)."""
        ctx, n, w = r.ctx, self.experts, self.expert_width
        if r.expert is not None:
            raise RuntimeError("a compact MoE conv reads a dense activation (no slices in the compact layout)")
        if ctx.execution == "masked":
            # the naive reference (what the public code does): every expert, then keep the chosen one
            y = self._conv(r.x, self.weight)
            m = channel_mask(e_out, self.out_channels, n, y.dtype) if gate is None else gate.repeat_interleave(w, dim=1)
            out = Routed(gather_slices(y * expand_mask(m, y), e_out, n), None, w, 1, ctx)
            return out if bn is None else bn(out)
        fold = bn is not None and bn.foldable(ctx)
        scale = shift = None
        if fold:
            assert bn is not None
            scale, shift = bn.eval_affine()  # [w]: the batch norm is shared by every expert
        gate_grad = gate is not None and gate.requires_grad
        groups = groups_of(e_out, n)
        xs = split_rows(r.x, [idx for _, idx in groups])
        parts = []
        for (e, idx), xg in zip(groups, xs):
            wb = self.weight[e * w:(e + 1) * w]
            if not fold:
                parts.append((idx, self._conv(xg, wb)))
                continue
            wb = wb * scale.view(-1, 1, 1, 1)  # type: ignore[union-attr]
            if not gate_grad:
                parts.append((idx, F.conv2d(xg, wb, shift, self.stride, self.padding)))
            else:  # the gate multiplies the conv output before the shift, as it does before BN
                parts.append((idx, apply_gate(self._conv(xg, wb), gate[idx]) + shift.view(1, -1, 1, 1)))  # type: ignore[index,union-attr]
        y = merge_rows(parts, r.x.shape[0])
        if gate_grad and not fold:
            y = apply_gate(y, gate)  # type: ignore[arg-type]
        out = Routed(y, None, w, 1, ctx)
        return out if (bn is None or fold) else bn(out)


def conv_bn(conv: RoutedConv2d, bn: "RoutedBatchNorm2d", r: Routed, out_expert: Tensor | None = None) -> Routed:
    """``bn(conv(r))``, with the batch norm folded into the convolution when it uses running statistics.

    In eval mode batch norm is a per-channel affine map ``y * scale + shift``; folding it gives the
    convolution the weight ``W * scale`` and the bias ``shift`` (for an MoE conv: per expert block), so
    no separate pass over the activation is made. Same values up to float rounding and the same
    gradients (input, parameters and the router's straight-through gate). Not folded: training mode
    (batch statistics), masked execution (the naive reference keeps BN separate, as the paper's code
    does), ``model.fold_bn = False``, and traced forwards (FLOP counting counts BN separately).
    """
    return conv(r, out_expert=out_expert, bn=bn)


class RoutedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose statistics, per channel, cover only the inputs that use that channel."""

    def __init__(self, num_features: int, momentum: float = 0.1) -> None:
        super().__init__(num_features, momentum=momentum)

    def foldable(self, ctx: "RoutingContext") -> bool:
        """Whether this BN may be folded into the preceding conv (see :func:`conv_bn`)."""
        return (ctx.fold_bn and ctx.execution == "sparse" and not self.training
                and self.running_mean is not None and not torch.jit.is_tracing())

    def eval_affine(self) -> tuple[Tensor, Tensor]:
        """Eval-mode ``(scale, shift)`` per channel, ``[C]`` each: ``bn(y) = y * scale + shift``."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def forward(self, r: Routed) -> Routed:  # type: ignore[override]
        if r.full != self.num_features:
            raise RuntimeError(f"BN of {self.num_features} channels got a {r.full}-channel activation")
        use_batch = self.training or self.running_mean is None
        if r.expert is None:
            return r.with_x(F.batch_norm(r.x, self.running_mean, self.running_var, self.weight, self.bias,
                                         use_batch, self.momentum, self.eps))
        if r.ctx.execution == "sparse":
            w = r.width
            if not use_batch and not torch.jit.is_tracing():
                # Running statistics: batch norm is a per-channel affine map, so apply each input's
                # slice of it in one fused pass instead of grouping (gathers and scatters) the batch.
                # (A traced forward, e.g. fvcore FLOP counting, keeps F.batch_norm so BN is counted.)
                scale, shift = self.eval_affine()
                shape = (r.x.shape[0], w) + (1,) * (r.x.dim() - 2)
                s = scale.view(r.groups, w).index_select(0, r.expert).view(shape)
                t = shift.view(r.groups, w).index_select(0, r.expert).view(shape)
                return r.with_x(torch.addcmul(t, r.x, s))
            groups = groups_of(r.expert, r.groups)
            parts = []
            for (e, idx), xg in zip(groups, split_rows(r.x, [idx for _, idx in groups])):
                sl = slice(e * w, (e + 1) * w)
                parts.append((idx, F.batch_norm(
                    xg, self.running_mean[sl], self.running_var[sl],
                    self.weight[sl], self.bias[sl], use_batch, self.momentum, self.eps)))
            return r.with_x(merge_rows(parts, r.x.shape[0]))
        # masked reference: statistics over the inputs whose slice holds the channel
        x = r.x
        m = expand_mask(channel_mask(r.expert, r.full, r.groups, x.dtype), x)
        if use_batch:
            dims = [0] + list(range(2, x.dim()))
            n = (m.expand_as(x)).sum(dim=dims)
            mean = (x * m).sum(dim=dims) / n.clamp_min(1)
            shape = (1, -1) + (1,) * (x.dim() - 2)
            var = (((x - mean.view(shape)) ** 2) * m).sum(dim=dims) / n.clamp_min(1)
            y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
            y = y * self.weight.view(shape) + self.bias.view(shape)
            if self.training:
                with torch.no_grad():
                    seen = n > 0
                    unbiased = var * n / (n - 1).clamp_min(1)
                    mom = self.momentum
                    self.running_mean[seen] = (1 - mom) * self.running_mean[seen] + mom * mean[seen]
                    self.running_var[seen] = (1 - mom) * self.running_var[seen] + mom * unbiased[seen]
        else:
            y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return r.with_x(y * m)


class RoutedLinear(nn.Linear):
    """Classifier on a routed feature vector ``[B, F]``; it follows the input's slice. Output dense."""

    def forward(self, r: Routed) -> Tensor:  # type: ignore[override]
        if r.expert is None or r.ctx.execution == "masked":
            return F.linear(r.x, self.weight, self.bias)
        w = self.in_features // r.groups
        groups = groups_of(r.expert, r.groups)
        xs = split_rows(r.x, [idx for _, idx in groups])
        parts = [(idx, F.linear(xg, self.weight[:, e * w:(e + 1) * w], self.bias)) for (e, idx), xg in zip(groups, xs)]
        return merge_rows(parts, r.x.shape[0])


def routed_add(main: Routed, shortcut: Routed) -> Routed:
    """Residual add in ``main``'s layout; the identity shortcut is never dropped.

    A routed shortcut (on slice ``e_in``) is moved onto ``main``'s slice ``e_out``: its channel ``j``
    is added to ``main``'s channel ``j`` (in sparse execution both are the same compact ``[B, w, ...]``
    tensor layout, so this is a plain add). A dense shortcut contributes its channels on ``main``'s
    slice. (With an input on expert 0 and a block output on expert 1, an add that kept the channels in
    place would add nothing at all: the block would lose its residual.)
    """
    if main.full != shortcut.full:
        raise RuntimeError(f"residual add of {main.full} and {shortcut.full} channels")
    if main.expert is None:
        return main.with_x(main.x + shortcut.to_full())
    if main.ctx.execution == "masked":
        if shortcut.expert is None:
            m = channel_mask(main.expert, main.full, main.groups, main.x.dtype)
            return main.with_x(main.x + shortcut.x * expand_mask(m, main.x))
        moved = scatter_slices(gather_slices(shortcut.x, shortcut.expert, shortcut.groups), main.expert, main.groups)
        return main.with_x(main.x + moved)
    if shortcut.expert is None:
        return main.with_x(main.x + gather_slices(shortcut.x, main.expert, main.groups))
    return main.with_x(main.x + shortcut.x)


def routed_cat(parts: list[Routed]) -> Routed:
    """Channel concatenation (DenseNet): the result is dense (full width, zeros where inactive)."""
    x = torch.cat([p.to_full() for p in parts], dim=1)
    return Routed(x, None, x.shape[1], parts[0].groups, parts[0].ctx)


def flatten(r: Routed) -> Routed:
    """``[B, C, H, W]`` -> ``[B, C*H*W]``; slices stay contiguous because channels are outermost."""
    hw = int(math.prod(r.x.shape[2:]))
    return Routed(r.x.flatten(1), r.expert, r.full * hw, r.groups, r.ctx)
