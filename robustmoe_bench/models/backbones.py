"""Backbone families, each written once against :class:`~.builder.LayerKind`.

Every backbone maps a :class:`~.routing.Routed` image (already normalised) to logits ``[B, classes]``.
MoE positions are the 3x3 convolutions inside the blocks; stems stay dense. In the ``compact`` expert
layout the MoE positions, stem widths and heads follow the paper's public code (ResNet: 64-channel
stem, shared 1x1 shortcuts; Wide-ResNet: stem shrunk to r*16, routed 1x1 shortcuts; VGG-16: first conv
shrunk to r*64, 2x2 average pool and a 256-256 MLP head; DenseNet-BC: both convs of a dense layer
routed), so parameter counts and GFLOPs equal the public code's models (tests/test_paper_models.py).
"""
from __future__ import annotations

import re
from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry
from .builder import LayerKind
from .layers import conv_bn, flatten, routed_add, routed_cat
from .routing import Routed
from .topk import TopKBlock

# name -> factory(L, in_channels, num_classes, stem) -> nn.Module
ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("architecture")


def _relu(r: Routed) -> Routed:
    return r.apply(F.relu)


def _gap(r: Routed) -> Routed:
    return r.apply(lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1))


class Stem(nn.Module):
    """Dense full-width stem: 3x3 conv for small inputs, 7x7/2 conv + max-pool for ImageNet."""

    def __init__(self, L: LayerKind, cin: int, cout: int, stem: str, post_act: bool = True) -> None:
        super().__init__()
        self.imagenet = stem == "imagenet"
        self.conv = L.conv(cin, cout, 7, 2, 3) if self.imagenet else L.conv(cin, cout, 3, 1, 1)
        self.bn = L.bn(cout) if (post_act or self.imagenet) else None

    def forward(self, r: Routed) -> Routed:
        if self.bn is not None:
            r = _relu(conv_bn(self.conv, self.bn, r))
        else:
            r = self.conv(r)
        if self.imagenet:
            r = r.apply(lambda x: F.max_pool2d(x, 3, 2, 1))
        return r


# --------------------------------------------------------------------------- ResNet (post-activation)
class BasicBlock(nn.Module):
    def __init__(self, L: LayerKind, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = L.conv_moe(cin, cout, 3, stride), L.bn(cout)
        self.conv2, self.bn2 = L.conv_moe(cout, cout, 3, 1), L.bn(cout)
        self.sc_conv = self.sc_bn = None
        if stride != 1 or cin != cout:
            self.sc_conv, self.sc_bn = L.conv_follow(cin, cout, 1, stride, 0, compact_role="dense"), L.bn(cout)

    def forward(self, r: Routed) -> Routed:
        h = _relu(conv_bn(self.conv1, self.bn1, r))
        h = conv_bn(self.conv2, self.bn2, h)
        s = r if self.sc_conv is None else conv_bn(self.sc_conv, self.sc_bn, r, out_expert=h.expert)
        return _relu(routed_add(h, s))


class ResNet(nn.Module):
    def __init__(self, L: LayerKind, in_channels: int, num_classes: int, stem: str,
                 blocks: tuple[int, ...], widths: tuple[int, ...], stem_width: int) -> None:
        super().__init__()
        c = L.dense_width(stem_width)
        self.stem = Stem(L, in_channels, c, stem)
        layers: list[nn.Module] = []
        for i, (n, w) in enumerate(zip(blocks, widths)):
            Ls = L.for_stage(i + 1, len(blocks))  # full-copy experts (conv/block) only in their stages
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                if Ls.topk and Ls.moe == "block":
                    D = Ls.dense()
                    layers.append(TopKBlock(c, w, [BasicBlock(D, c, w, stride) for _ in range(Ls.experts)],
                                            opts=Ls.gate))
                else:
                    layers.append(BasicBlock(Ls, c, Ls.width(w), stride))
                c = Ls.width(w)
        self.layers = nn.ModuleList(layers)
        self.fc = L.linear(c, num_classes)

    def forward(self, r: Routed) -> Tensor:
        r = self.stem(r)
        for block in self.layers:
            r = block(r)
        return self.fc(_gap(r))


@ARCHITECTURES.register("resnet18")
def resnet18(L: LayerKind, in_channels: int, num_classes: int, stem: str) -> nn.Module:
    """ResNet-18 (3x3 stem for 32x32/64x64 inputs, 7x7 stem for ImageNet)."""
    return ResNet(L, in_channels, num_classes, stem, (2, 2, 2, 2), (64, 128, 256, 512), 64)


@ARCHITECTURES.register("resnet-mini")
def resnet_mini(L: LayerKind, in_channels: int, num_classes: int, stem: str) -> nn.Module:
    """Three-stage ResNet (16-32-64 channels, one block each) that trains in minutes on 2 CPU cores."""
    return ResNet(L, in_channels, num_classes, stem, (1, 1, 1), (16, 32, 64), 16)


@ARCHITECTURES.register("resnet-tiny")
def resnet_tiny(L: LayerKind, in_channels: int, num_classes: int, stem: str) -> nn.Module:
    """Two-stage ResNet (8-16 channels) for tests."""
    return ResNet(L, in_channels, num_classes, stem, (1, 1), (8, 16), 8)


# --------------------------------------------------------------------------- Wide-ResNet (pre-activation)
class WideBlock(nn.Module):
    """Pre-activation block. ``raw_projection``: where the block has a projection shortcut, its first conv
    and the projection read the block's raw input instead of ``relu(bn1(input))`` (bn1 then unused):
    what the paper's public code's Wide-ResNet MoE computes (set by ``compat="advmoe-public"`` so that
    converted checkpoints give the same logits)."""

    def __init__(self, L: LayerKind, cin: int, cout: int, stride: int, raw_projection: bool = False) -> None:
        super().__init__()
        self.bn1, self.conv1 = L.bn(cin), L.conv_moe(cin, cout, 3, stride)
        self.bn2, self.conv2 = L.bn(cout), L.conv_moe(cout, cout, 3, 1)
        self.proj = (L.conv_follow(cin, cout, 1, stride, 0, compact_role="moe")
                     if (stride != 1 or cin != cout) else None)
        self.raw_projection = raw_projection and self.proj is not None

    def forward(self, r: Routed) -> Routed:
        o = r if self.raw_projection else _relu(self.bn1(r))
        h = self.conv2(_relu(self.bn2(self.conv1(o))))
        s = r if self.proj is None else self.proj(o, out_expert=h.expert)
        return routed_add(h, s)


class WideResNet(nn.Module):
    def __init__(self, L: LayerKind, in_channels: int, num_classes: int, stem: str, depth: int, widen: int) -> None:
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 (e.g. 16, 28, 34), got {depth}")
        n = (depth - 4) // 6
        c = L.dense_width(16, moe_scaled=True)
        self.stem = Stem(L, in_channels, c, stem, post_act=False)
        layers = []
        for i, w in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for j in range(n):
                layers.append(WideBlock(L, c, L.width(w), 2 if (i > 0 and j == 0) else 1,
                                        raw_projection=L.compat == "advmoe-public" and L.kind == "moe"))
                c = L.width(w)
        self.layers = nn.ModuleList(layers)
        self.bn = L.bn(c)
        self.fc = L.linear(c, num_classes)

    def forward(self, r: Routed) -> Tensor:
        r = self.stem(r)
        for block in self.layers:
            r = block(r)
        return self.fc(_gap(_relu(self.bn(r))))


WRN_PATTERN = re.compile(r"^wrn-(\d+)-(\d+)$")


def wide_resnet(depth: int, widen: int) -> Callable[..., nn.Module]:
    def make(L: LayerKind, in_channels: int, num_classes: int, stem: str) -> nn.Module:
        return WideResNet(L, in_channels, num_classes, stem, depth, widen)

    make.__doc__ = f"Wide-ResNet-{depth}-{widen} (pre-activation); any wrn-D-W with D = 6n+4 works."
    return make


for _d, _w in ((28, 10), (34, 10), (34, 20), (70, 16), (16, 4), (16, 8)):
    ARCHITECTURES.register(f"wrn-{_d}-{_w}", wide_resnet(_d, _w))


# --------------------------------------------------------------------------- VGG-16 with batch norm
#: VGG-16's convolutions as the public code builds them: four max-pools (a 32x32 input ends at 2x2)
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGG(nn.Module):
    """VGG with batch norm. ``head="mlp"``: 2x2 adaptive average pool, then linear -> 256 -> 256 ->
    classes with ReLUs (the public code's head, for every input size); ``head="linear"``: global average
    pool and one linear layer."""

    def __init__(self, L: LayerKind, in_channels: int, num_classes: int, stem: str, cfg: tuple = VGG16,
                 head: str = "mlp") -> None:
        super().__init__()
        convs, bns, self.plan = [], [], []
        c = None
        for v in cfg:
            if v == "M":
                self.plan.append("M")
                continue
            if c is None:  # the first conv is the stem: dense (the compact MoE shrinks it, as the public code)
                out = L.dense_width(v, moe_scaled=True)
                convs.append(L.conv(in_channels, out, 3, 1, 1))
            else:
                out = L.width(v)
                convs.append(L.conv_moe(c, out, 3, 1, 1))
            bns.append(L.bn(out))
            self.plan.append("C")
            c = out
        self.convs, self.bns = nn.ModuleList(convs), nn.ModuleList(bns)
        self.mlp = head == "mlp"
        if self.mlp:
            self.fc1 = L.linear(c * 4, 256)
            self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(256, 256), nn.ReLU(inplace=True),
                                      nn.Linear(256, num_classes))
        else:
            self.fc1 = L.linear(c, num_classes)
            self.head = nn.Identity()

    def forward(self, r: Routed) -> Tensor:
        i = 0
        for step in self.plan:
            if step == "M":
                r = r.apply(lambda x: F.max_pool2d(x, 2))
            else:
                r = _relu(conv_bn(self.convs[i], self.bns[i], r))
                i += 1
        r = flatten(r.apply(lambda x: F.adaptive_avg_pool2d(x, 2))) if self.mlp else _gap(r)
        return self.head(self.fc1(r))


@ARCHITECTURES.register("vgg16-bn")
def vgg16_bn(L: LayerKind, in_channels: int, num_classes: int, stem: str) -> nn.Module:
    """VGG-16 with batch norm and the public code's head (2x2 average pool, 256-256 MLP)."""
    return VGG(L, in_channels, num_classes, stem)


# --------------------------------------------------------------------------- DenseNet-BC
class DenseLayer(nn.Module):
    def __init__(self, L: LayerKind, cin: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = L.bn(cin), L.conv_moe(cin, bottleneck, 1, 1, 0, slice_role="dense")
        self.bn2, self.conv2 = L.bn(bottleneck), L.conv_moe(bottleneck, growth, 3, 1, 1)

    def forward(self, r: Routed) -> Routed:
        h = self.conv1(_relu(self.bn1(r)))
        return self.conv2(_relu(self.bn2(h)))


class Transition(nn.Module):
    def __init__(self, L: LayerKind, cin: int, cout: int) -> None:
        super().__init__()
        self.bn, self.conv = L.bn(cin), L.conv(cin, cout, 1, 1, 0)

    def forward(self, r: Routed) -> Routed:
        return self.conv(_relu(self.bn(r))).apply(lambda x: F.avg_pool2d(x, 2))


class DenseNet(nn.Module):
    """DenseNet-BC (bottleneck 4 x growth, compression 0.5)."""

    def __init__(self, L: LayerKind, in_channels: int, num_classes: int, stem: str,
                 blocks: tuple[int, ...] = (6, 6, 6), growth: int = 12, init: int = 24) -> None:
        super().__init__()
        c = L.dense_width(init)
        self.stem = Stem(L, in_channels, c, stem, post_act=False)
        g = L.width(growth)
        # bottleneck: 4 x the growth one input meets (S-Dense and compact MoE: 4 * int(r*growth), as the
        # public code builds it); the slice MoE and Sparse keep the Dense bottleneck
        bw = 4 * (g if (L.kind == "sdense" or L.compact) else growth)
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            layers = nn.ModuleList()
            for _ in range(n):
                layers.append(DenseLayer(L, c, g, bw))
                c += g
            stages.append(layers)
            if i < len(blocks) - 1:
                stages.append(Transition(L, c, c // 2))
                c //= 2
        self.stages = nn.ModuleList(stages)
        self.bn = L.bn(c)
        self.fc = L.linear(c, num_classes)

    def forward(self, r: Routed) -> Tensor:
        r = self.stem(r)
        for stage in self.stages:
            if isinstance(stage, Transition):
                r = stage(r)
            else:
                for layer in stage:
                    r = routed_cat([r, layer(r)])
        return self.fc(_gap(_relu(self.bn(r))))


@ARCHITECTURES.register("densenet")
def densenet(L: LayerKind, in_channels: int, num_classes: int, stem: str) -> nn.Module:
    """DenseNet-BC-40 (growth 12, 3 blocks of 6 layers): the paper's DenseNet; 7x7 stem for ImageNet."""
    return DenseNet(L, in_channels, num_classes, stem, blocks=(6, 6, 6), growth=12, init=24)


@ARCHITECTURES.register("densenet121")
def densenet121(L: LayerKind, in_channels: int, num_classes: int, stem: str) -> nn.Module:
    """DenseNet-121-BC (growth 32); 3x3 stem for small inputs, 7x7 stem + max-pool for ImageNet."""
    return DenseNet(L, in_channels, num_classes, stem, blocks=(6, 12, 24, 16), growth=32, init=64)


@ARCHITECTURES.register("densenet-mini")
def densenet_mini(L: LayerKind, in_channels: int, num_classes: int, stem: str) -> nn.Module:
    """Small DenseNet-BC (blocks 2-2, growth 8) for tests and CPU runs."""
    return DenseNet(L, in_channels, num_classes, stem, blocks=(2, 2), growth=8, init=16)


@ARCHITECTURES.register("vgg-mini")
def vgg_mini(L: LayerKind, in_channels: int, num_classes: int, stem: str) -> nn.Module:
    """Small VGG-style net (16-32-M-64-M) for tests and CPU runs."""
    return VGG(L, in_channels, num_classes, "cifar", cfg=(16, 32, "M", 64, "M"), head="linear")
