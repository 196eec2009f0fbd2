"""The "layer kind" choice: one object that every backbone asks for its layers, so Dense, S-Dense,
Sparse and MoE come from the same backbone definition.

Widths (paper setup, C = the Dense width of a layer, r = scale, N = experts, ``slim(C) = int(r*C)``
as in the paper's public code):

===========  ================  ===========================  =====================  ===================
kind         stem width        MoE-position conv            activation after it    per-input width
===========  ================  ===========================  =====================  ===================
dense        C                 C                            C                      C
sdense       slim(C)           slim(C)                      slim(C)                slim(C)
sparse       C                 C, top slim(C) kept          C (masked)             slim(C)
moe compact  C (*)             N experts of slim(C) rows    slim(C) (chosen one)   slim(C)
moe slice    C                 N * slim(C), sliced          N * slim(C) (sliced)   slim(C)
===========  ================  ===========================  =====================  ===================

(*) Where the public code shrinks a stem in its MoE model (Wide-ResNet's first conv, VGG's first conv),
the compact MoE does too: the backbone asks for ``dense_width(C, moe_scaled=True)``.

Which convolutions are MoE layers also follows the public code in the compact layout: the backbone
says, per conv, what it is in each layout (``conv_moe(..., slice_role=...)``, ``conv_follow(...,
compact_role=...)``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..registry import Registry
from .layers import LAYOUTS, STE_DESIGNS, RoutedBatchNorm2d, RoutedConv2d, RoutedLinear
from .topk import EXPERT_KINDS, TOPK_KINDS, GateOptions, TopKConv

KINDS: Registry[str] = Registry("model kind")
KINDS.register("dense", "the original CNN, width C per layer")
KINDS.register("sdense", "every layer's width shrunk to r*C")
KINDS.register("sparse", "Dense with a learned channel mask keeping r*C channels per MoE-position layer (Hydra)")
KINDS.register("moe", "N experts of r*C channels per MoE layer; a router picks one per input")

ROUTERS: Registry[str] = Registry("router design")
ROUTERS.register("layer", "one gate per MoE layer: GAP of the layer input -> linear -> N scores")
ROUTERS.register("shared", "one small CNN on the image (2 convs); its N scores drive every MoE layer")
ROUTERS.register("resnet", "the paper's public code's router: a ResNet (3x3 blocks, 16-32-64) on the image; "
                           "its N scores drive every MoE layer")

EXPERT_LAYOUTS: Registry[str] = Registry("expert layout")
EXPERT_LAYOUTS.register("compact", "the public code's: each expert a block of conv rows; the chosen expert's "
                                   "r*C channels kept compactly; BN, shortcuts and classifier shared")
EXPERT_LAYOUTS.register("slice", "experts are channel slices of the Dense conv (weight blocks W[e_out, e_in]); "
                                 "per-slice BN")
assert set(EXPERT_LAYOUTS.names()) == set(LAYOUTS)

STES: Registry[str] = Registry("straight-through estimator")
STES.register("identity", "the public code's: the chosen router score gets the gate's gradient unchanged")
STES.register("softmax", "the chosen score's softmax probability carries the gate's gradient")
assert set(STES.names()) == set(STE_DESIGNS)

MOE_EXPERTS: Registry[str] = Registry("expert kind")
MOE_EXPERTS.register("channel", "AdvMoE's: each expert a group of r*C output channels of a conv; top-1 router")
MOE_EXPERTS.register("conv", "ConvMoE: each expert a whole conv of the layer (full copy); top-k gate per layer")
MOE_EXPERTS.register("block", "BlockMoE: each expert a whole residual block (full copy); top-k gate per block")
assert set(MOE_EXPERTS.names()) == set(EXPERT_KINDS)

#: Routers that are one network scoring the image once (every MoE layer uses its scores).
NETWORK_ROUTERS = ("shared", "resnet")


def default_ste(router: str) -> str:
    """The straight-through estimator a router design gets unless one is given: ``identity`` (the
    public code's) for a router network, ``softmax`` for per-layer gates -- with the identity estimator,
    per-layer gates diverged (NaN loss in the first epoch of ``std`` on fmnist-mini, compact layout;
    benchmarks/results/moe_design.md), with ``softmax`` they train."""
    return "identity" if router in NETWORK_ROUTERS else "softmax"


COMPAT = ("", "advmoe-public")


def slim(scale: float, c: int) -> int:
    """``int(r * C)`` (at least 1), the width rule of the paper's public code."""
    return max(1, int(scale * c + 1e-9))


@dataclass(frozen=True)
class LayerKind:
    """Layer factory for one model kind. ``experts``/``router``/``layout`` matter for ``moe`` only."""

    kind: str = "dense"
    experts: int = 2
    scale: float = 0.5
    router: str = "resnet"
    layout: str = "compact"
    #: "advmoe-public": reproduce the public code's computation where it differs from the textbook
    #: model (today: its Wide-ResNet MoE block, see backbones.WideBlock); "" otherwise
    compat: str = ""
    #: what one expert is (``channel``: slices, this class's layouts; ``conv``/``block``: full copies with
    #: a top-k gate, :mod:`.topk`, in the resnet stages ``stages`` -- 1-based, empty = the last stage)
    moe: str = "channel"
    k: int = 1
    stages: tuple[int, ...] = ()
    noise: float = 0.0
    capacity: float = 0.0
    #: set by the resnet backbones on the layer kind of a stage that holds full-copy experts
    staged: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown model kind {self.kind!r}; known: {', '.join(KINDS.names())}")
        if not (0 < self.scale <= 1):
            raise ConfigError(f"scale must be in (0, 1], got {self.scale}")
        if self.kind == "moe":
            if self.experts < 2:
                raise ConfigError(f"an MoE model needs at least 2 experts, got {self.experts}")
            if self.router not in ROUTERS:
                raise ConfigError(f"unknown router design {self.router!r}; known: {', '.join(ROUTERS.names())}")
            if self.layout not in EXPERT_LAYOUTS:
                raise ConfigError(f"unknown expert layout {self.layout!r}; known: {', '.join(EXPERT_LAYOUTS.names())}")
        if self.moe not in MOE_EXPERTS:
            raise ConfigError(f"unknown expert kind {self.moe!r}; known: {', '.join(MOE_EXPERTS.names())}")
        if self.moe in TOPK_KINDS:
            if self.kind != "moe":
                raise ConfigError(f"expert kind {self.moe!r} is for MoE models only")
            if not 1 <= self.k <= self.experts:
                raise ConfigError(f"top-k needs 1 <= k <= experts ({self.experts}), got k={self.k}")
            if not (self.noise >= 0 and self.capacity >= 0):
                raise ConfigError(f"noise and capacity must be >= 0, got {self.noise}, {self.capacity}")
            if any(int(s) < 1 for s in self.stages):
                raise ConfigError(f"MoE stages are numbered from 1, got {list(self.stages)}")
        elif self.k != 1 or self.stages or self.noise or self.capacity:
            raise ConfigError("top-k, MoE stages, noise and capacity apply to the conv and block expert kinds only")
        if self.compat not in COMPAT:
            raise ConfigError(f"unknown compat mode {self.compat!r}; known: {', '.join(repr(c) for c in COMPAT)}")

    @property
    def topk(self) -> bool:
        """Full-copy experts with a top-k gate (``conv`` or ``block``)."""
        return self.kind == "moe" and self.moe in TOPK_KINDS

    @property
    def gate(self) -> GateOptions:
        return GateOptions(self.k, self.noise, self.capacity)

    def moe_stage(self, stage: int, n_stages: int) -> bool:
        """Whether resnet stage ``stage`` (1-based) of ``n_stages`` holds full-copy experts."""
        if not self.topk:
            return False
        bad = [s for s in self.stages if s > n_stages]
        if bad:
            raise ConfigError(f"MoE stage(s) {bad} do not exist: this architecture has stages 1-{n_stages}")
        return stage in (self.stages or (n_stages,))

    def for_stage(self, stage: int, n_stages: int) -> "LayerKind":
        """The layer kind of one resnet stage: full-copy experts there, dense layers elsewhere."""
        if not self.topk:
            return self
        from dataclasses import replace

        if self.moe_stage(stage, n_stages):
            return replace(self, staged=True)
        return self.dense()

    def dense(self) -> "LayerKind":
        """The Dense layer kind (the layers around and inside full-copy experts)."""
        return LayerKind("dense", compat=self.compat)

    @property
    def compact(self) -> bool:
        return self.kind == "moe" and self.moe == "channel" and self.layout == "compact"

    @property
    def groups(self) -> int:
        """Slices of a routed activation: N for a slice-layout MoE, else 1."""
        return self.experts if (self.kind == "moe" and self.moe == "channel" and not self.compact) else 1

    def slim(self, c: int) -> int:
        return slim(self.scale, c)

    def dense_width(self, c: int, moe_scaled: bool = False) -> int:
        """Width of a dense-only layer (stem, VGG's first conv, DenseNet bottlenecks and transitions).
        ``moe_scaled``: the compact MoE shrinks this layer too (as the public code does)."""
        return self.slim(c) if (self.kind == "sdense" or (moe_scaled and self.compact)) else c

    def width(self, c: int) -> int:
        """Activation width after an MoE-position layer (compact MoE: one expert's width; slice MoE:
        the full width, all slices)."""
        if self.kind == "sdense" or self.compact:
            return self.slim(c)
        if self.kind == "moe" and not self.topk:
            return self.experts * self.slim(c)
        return c

    def _moe(self, cin: int, cout: int, k: int, stride: int, padding: int | None) -> RoutedConv2d:
        return RoutedConv2d(cin, cout, k, stride, padding, experts=self.experts, role="moe", router=self.router,
                            layout=self.layout)

    def conv_moe(self, cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None, *,
                 slice_role: str = "moe") -> RoutedConv2d:
        """A conv at an MoE position; ``cout`` already from :meth:`width`. ``slice_role="dense"``: an MoE
        layer in the compact layout only (e.g. DenseNet's 1x1 bottleneck, routed by the public code)."""
        if self.topk:
            if not self.staged:
                raise ConfigError(f"--moe {self.moe} experts exist in the resnet architectures only "
                                  "(resnet18, resnet-mini, resnet-tiny)")
            if self.moe == "conv":
                return TopKConv(cin, cout, k, stride, padding, experts=self.experts, opts=self.gate)  # type: ignore[return-value]
            raise RuntimeError("a BlockMoE stage builds whole blocks, not MoE convs")
        if self.kind == "moe" and (self.compact or slice_role == "moe"):
            return self._moe(cin, cout, k, stride, padding)
        keep = self.slim(cout) if (self.kind == "sparse" and slice_role == "moe") else None
        return RoutedConv2d(cin, cout, k, stride, padding, experts=self.groups, mask_keep=keep)

    def conv_follow(self, cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None, *,
                    compact_role: str = "dense") -> RoutedConv2d:
        """A projection shortcut. Slice layout: output on the slice of the branch it joins. Compact
        layout: ``compact_role`` -- a conv shared by all experts (``dense``, ResNet in the public code)
        or an MoE layer of its own (``moe``, Wide-ResNet in the public code)."""
        if self.kind == "moe" and not self.compact and not self.topk:
            return RoutedConv2d(cin, cout, k, stride, padding, experts=self.experts, role="follow")
        if self.compact and compact_role == "moe":
            return self._moe(cin, cout, k, stride, padding)
        return RoutedConv2d(cin, cout, k, stride, padding)

    def conv(self, cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None) -> RoutedConv2d:
        """An ordinary dense conv (stem, DenseNet transitions)."""
        return RoutedConv2d(cin, cout, k, stride, padding, experts=self.groups)

    def bn(self, c: int) -> RoutedBatchNorm2d:
        return RoutedBatchNorm2d(c)

    def linear(self, cin: int, cout: int) -> RoutedLinear:
        return RoutedLinear(cin, cout)
