"""``create_model(name, kind=..., ...)``: every model is built by name from one backbone definition.

The returned :class:`RoutedNet` takes images in [0, 1] (normalisation lives inside the model) and
returns logits. Its ``spec`` (:class:`ModelSpec`) is everything needed to rebuild it; checkpoints
store it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import from_dict
from ..errors import ConfigError
from .backbones import ARCHITECTURES, WRN_PATTERN, wide_resnet
from .builder import KINDS, LayerKind, default_ste
from .layers import STE_DESIGNS, ResNetRouter, RoutedConv2d, SharedRouter
from .topk import TOPK_KINDS, TopKMoE

#: router designs that run one network on the image and drive every MoE layer with its scores
SHARED_ROUTERS = {"shared": SharedRouter, "resnet": ResNetRouter}
from .routing import EXECUTIONS, Routed, RoutingContext


#: values of fields a model spec did not have before they were added
LEGACY_DEFAULTS = {"layout": "slice", "ste": "softmax"}


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines a model's structure (saved in checkpoints)."""

    arch: str
    kind: str = "dense"
    experts: int = 2
    scale: float = 0.5
    router: str = "resnet"
    dataset: str = "cifar10"
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (3, 32, 32)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    stem: str = "cifar"
    layout: str = "compact"
    ste: str = "identity"
    compat: str = ""
    #: expert kind: ``channel`` (slices, top-1) or the full-copy ``conv``/``block`` experts with a top-k
    #: gate (:mod:`.topk`) in resnet stages ``moe_stages`` (1-based; empty = the last stage)
    moe: str = "channel"
    k: int = 1
    moe_stages: tuple[int, ...] = ()
    noise: float = 0.0
    capacity: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        for k in ("input_shape", "mean", "std", "moe_stages"):
            if k in d:
                d[k] = tuple(d[k])
        # checkpoints written before the compact layout existed hold slice-layout models trained with
        # the softmax straight-through estimator
        for k, legacy in LEGACY_DEFAULTS.items():
            d.setdefault(k, legacy)
        return from_dict(cls, d, what="model spec")

    @property
    def is_moe(self) -> bool:
        return self.kind == "moe"

    @property
    def top_k(self) -> int:
        """Experts chosen per input and MoE layer (1 for the channel MoE)."""
        return self.k if self.kind == "moe" else 1

    def layer_kind(self) -> LayerKind:
        return LayerKind(self.kind, self.experts, self.scale, self.router, self.layout, self.compat,
                         self.moe, self.k, tuple(self.moe_stages), self.noise, self.capacity)

    def describe(self) -> str:
        s = f"{self.arch} {self.kind}"
        if self.kind == "moe" and self.moe in TOPK_KINDS:
            name = {"conv": "ConvMoE", "block": "BlockMoE"}[self.moe]
            stages = ",".join(str(x) for x in self.moe_stages) or "last"
            s += f" ({name} N={self.experts}, top-{self.k}, stages={stages}"
            s += (f", noise={self.noise:g}" if self.noise else "") + (f", capacity={self.capacity:g}" if self.capacity else "")
            s += ")"
        elif self.kind == "moe":
            s += f" (N={self.experts}, r={self.scale:g}, router={self.router}, layout={self.layout})"
        elif self.kind in ("sdense", "sparse"):
            s += f" (r={self.scale:g})"
        return s + f" on {self.dataset}"


def _architecture(name: str):
    if name in ARCHITECTURES:
        return ARCHITECTURES.get(name)
    m = WRN_PATTERN.match(name)
    if m:
        return wide_resnet(int(m.group(1)), int(m.group(2)))
    raise ConfigError(
        f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES.names())} (and any wrn-D-W)"
    )


class RoutedNet(nn.Module):
    """A backbone with in-model normalisation, an optional shared router and routing controls.

    ``forward(x)``: ``x`` ``[B, C, H, W]`` in [0, 1] -> logits ``[B, classes]``.
    ``execution``: ``"sparse"`` (default; only chosen experts are computed) or ``"masked"``
    (every expert computed then masked: the naive reference).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        if spec.ste not in STE_DESIGNS:
            raise ConfigError(f"unknown straight-through estimator {spec.ste!r}; known: {', '.join(STE_DESIGNS)}")
        L = spec.layer_kind()
        self._groups = L.groups
        self.body = _architecture(spec.arch)(L, spec.input_shape[0], spec.num_classes, spec.stem)
        self.router: nn.Module | None = None
        if spec.is_moe and spec.router in SHARED_ROUTERS:
            self.router = SHARED_ROUTERS[spec.router](spec.input_shape[0], spec.experts)
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.execution = "sparse"
        # Eval-mode conv + batch-norm folding in sparse execution (layers.conv_bn); off = BN run separately.
        self.fold_bn = True
        self._trace: list | None = None
        self._forced: dict | None = None
        for name, m in self.named_modules():
            if isinstance(m, (RoutedConv2d, TopKMoE)):
                m.layer_name = name

    @property
    def shares_routing(self) -> bool:
        """True when one router network scores the image once and every MoE layer uses those scores
        (so an input takes one expert index through the whole network)."""
        return self.router is not None

    def moe_layers(self) -> list[tuple[str, nn.Module]]:
        """MoE layers in execution order (= registration order for every backbone here): channel-MoE
        convolutions (:class:`RoutedConv2d`) or top-k layers (:class:`~.topk.TopKConv`,
        :class:`~.topk.TopKBlock`); each has ``.experts`` and ``.router``."""
        return [(n, m) for n, m in self.named_modules()
                if (isinstance(m, RoutedConv2d) and m.role == "moe") or isinstance(m, TopKMoE)]

    @property
    def top_k(self) -> int:
        """Experts chosen per input and MoE layer."""
        return self.spec.top_k

    def router_parameters(self) -> list[nn.Parameter]:
        """Router parameters (phi in AdvMoE): the shared router or every layer gate."""
        if self.router is not None:
            return list(self.router.parameters())
        return [p for _, m in self.moe_layers() if m.router is not None for p in m.router.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not a router parameter (psi in AdvMoE)."""
        ids = {id(p) for p in self.router_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def router_scores(self, x: Tensor) -> Tensor:
        """The shared router network's scores ``[B, experts]`` for ``x`` ``[B, C, H, W]`` in [0, 1]
        (models whose :attr:`shares_routing` is true only)."""
        if self.router is None:
            raise ConfigError(f"{self.spec.describe()} has no shared router network")
        return self.router((x - self.mean) / self.std)

    def forward(self, x: Tensor) -> Tensor:
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}")
        xn = (x - self.mean) / self.std
        ctx = RoutingContext(self.execution, None, None, self._forced, self.fold_bn, ste=self.spec.ste)
        if self._trace is not None:
            ctx.trace = []
        if self.router is not None:
            ctx.shared_logits = self.router(xn)
        out = self.body(Routed(xn, None, xn.shape[1], self._groups, ctx))
        if ctx.traced_scores:
            # The routers' scores steer which expert runs through Python-level dispatch only, so a
            # traced graph (fvcore FLOP counting) would drop the routers as dead code. A zero-valued
            # dependency keeps them (element-wise ops are not counted; eager forwards never get here).
            out = out + 0.0 * sum(s.sum() for s in ctx.traced_scores)
        if self._trace is not None:
            self._trace.append(ctx.trace)
        return out


def create_model(
    name: str,
    kind: str = "dense",
    *,
    experts: int = 2,
    scale: float = 0.5,
    router: str = "resnet",
    dataset: str = "cifar10",
    num_classes: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    layout: str = "compact",
    ste: str | None = None,
    compat: str = "",
    moe: str = "channel",
    k: int = 1,
    moe_stages: tuple[int, ...] | list[int] = (),
    noise: float = 0.0,
    capacity: float = 0.0,
) -> RoutedNet:
    """Build a model by architecture name and kind.

    Example: ``create_model("resnet18", kind="moe", experts=2, scale=0.5, dataset="cifar10")`` -- the
    paper's MoE-CNN (compact experts, the ``resnet`` router network, the identity straight-through
    estimator). ``ste=None`` picks :func:`~.builder.default_ste` for the router design. ``dataset``
    supplies classes, input shape, normalisation and stem unless given explicitly.

    Full-copy experts: ``create_model("resnet18", kind="moe", moe="conv", experts=4, k=2)`` -- ConvMoE
    in the last stage with a top-2 gate per layer (``moe="block"``: BlockMoE); ``moe_stages`` (1-based),
    ``noise`` and ``capacity`` as in :mod:`.topk`. These have per-layer gates, no model scale and no
    channel layout: ``router``, ``layout`` and ``scale`` are stored as ``layer``, ``compact`` and 1.
    """
    from ..data import get_dataset_info

    info = get_dataset_info(dataset)
    shape = tuple(input_shape) if input_shape is not None else tuple(info.input_shape)
    _architecture(name)  # fail early with the list of known names
    if kind == "moe" and moe in TOPK_KINDS:
        router, layout, scale, ste = "layer", "compact", 1.0, "softmax"
    stages = tuple(int(s) for s in moe_stages)
    LayerKind(kind, experts, scale, router, layout, compat, moe, int(k), stages, float(noise),
              float(capacity))  # validates every option
    spec = ModelSpec(
        arch=name, kind=kind, experts=int(experts), scale=float(scale), router=router, dataset=dataset,
        num_classes=int(num_classes or info.num_classes), input_shape=shape,  # type: ignore[arg-type]
        mean=tuple(info.mean), std=tuple(info.std), stem="imagenet" if shape[1] >= 128 else "cifar",
        layout=layout, ste=default_ste(router) if ste is None else ste, compat=compat,
        moe=moe, k=int(k), moe_stages=stages, noise=float(noise), capacity=float(capacity),
    )
    return build_model(spec)


def build_model(spec: ModelSpec) -> RoutedNet:
    """Build a model from a :class:`ModelSpec` (as stored in a checkpoint)."""
    return RoutedNet(spec)


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names (wildcards allowed); any ``wrn-D-W`` is accepted as well."""
    return ARCHITECTURES.names(pattern)


def architecture_doc(name: str) -> str:
    fn = _architecture(name)
    return (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""


__all__ = ["ModelSpec", "RoutedNet", "create_model", "build_model", "list_models", "KINDS"]
