"""The "layer kind" choice: one object that every backbone asks for its layers, so Dense, S-Dense,
Sparse and MoE come from the same backbone definition.

Widths (paper setup, C = the Dense width of a layer, r = scale, N = experts):

=========  ==============  ===========================  =============================
kind       stem width      MoE-position conv width      per-input active width
=========  ==============  ===========================  =============================
dense      C               C                            C
sdense     round(r*C)      round(r*C)                   round(r*C)
sparse     C               C, top round(r*C) kept        round(r*C)
moe        C (dense)       N * round(r*C)               round(r*C) (one expert)
=========  ==============  ===========================  =============================
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..registry import Registry
from .layers import RoutedBatchNorm2d, RoutedConv2d, RoutedLinear

KINDS: Registry[str] = Registry("model kind")
KINDS.register("dense", "the original CNN, width C per layer")
KINDS.register("sdense", "every layer's width shrunk to r*C")
KINDS.register("sparse", "Dense with a learned channel mask keeping r*C channels per MoE-position layer (Hydra)")
KINDS.register("moe", "N experts of r*C channels per MoE layer; a router picks one per input")

ROUTERS: Registry[str] = Registry("router design")
ROUTERS.register("layer", "one gate per MoE layer: GAP of the layer input -> linear -> N scores")
ROUTERS.register("shared", "one small CNN on the image; its N scores drive every MoE layer")


@dataclass(frozen=True)
class LayerKind:
    """Layer factory for one model kind. ``experts``/``router`` matter for ``moe`` only."""

    kind: str = "dense"
    experts: int = 2
    scale: float = 0.5
    router: str = "layer"

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

    @property
    def groups(self) -> int:
        return self.experts if self.kind == "moe" else 1

    def slim(self, c: int) -> int:
        return max(1, int(round(self.scale * c)))

    def dense_width(self, c: int) -> int:
        """Width of a dense-only layer (stem, VGG's first conv, DenseNet bottlenecks)."""
        return self.slim(c) if self.kind == "sdense" else c

    def width(self, c: int) -> int:
        """Full width of a layer at an MoE position (and of the feature maps it produces)."""
        if self.kind == "sdense":
            return self.slim(c)
        if self.kind == "moe":
            return self.experts * self.slim(c)
        return c

    def conv_moe(self, cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None) -> RoutedConv2d:
        """A conv at an MoE position (the 3x3 convs inside the blocks); ``cout`` already from :meth:`width`."""
        if self.kind == "moe":
            return RoutedConv2d(cin, cout, k, stride, padding, experts=self.experts, role="moe", router=self.router)
        keep = self.slim(cout) if self.kind == "sparse" else None
        return RoutedConv2d(cin, cout, k, stride, padding, mask_keep=keep)

    def conv_follow(self, cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None) -> RoutedConv2d:
        """A conv whose output lies on the slice of the branch it joins (projection shortcuts)."""
        if self.kind == "moe":
            return RoutedConv2d(cin, cout, k, stride, padding, experts=self.experts, role="follow")
        return RoutedConv2d(cin, cout, k, stride, padding)

    def conv(self, cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None) -> RoutedConv2d:
        """An ordinary dense conv (stem, DenseNet bottlenecks and transitions)."""
        return RoutedConv2d(cin, cout, k, stride, padding, experts=self.groups)

    def bn(self, c: int) -> RoutedBatchNorm2d:
        return RoutedBatchNorm2d(c)

    def linear(self, cin: int, cout: int) -> RoutedLinear:
        return RoutedLinear(cin, cout)
