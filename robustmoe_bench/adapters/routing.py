"""Routing adapters: how the attacks and analyses see the routing of ANY Mixture-of-Experts model.

Everything routing-aware in robustmoe-bench (router attacks, routing-change rates, adaptive attacks,
dissection, pathway IoU, the determinism check) talks to a model's routing only through a
:class:`RoutingAdapter`. Per forward pass, an adapter reports for each MoE layer (in execution order)

* the router logits ``[B, N]`` WITH autograd history (router attacks differentiate them), and
* the chosen experts ``[B, k]`` long, sorted ascending: a *set* of ``k`` experts per input
  (``k = top_k``; ``k = 1`` for hard top-1 routing).

Optionally (``can_force = True``) it can *force a pathway*: make every MoE layer use given experts
instead of its router's choice. That enables the pathway-forced and soft-routing adaptive attacks; a
suite skips them (with the reason in the results) for adapters that cannot force.

Sets (top-k, k >= 2): an input's routing in a layer is the set of its k chosen experts. Its routing
*changed* under an attack iff the set changed in at least one layer (the order of the k experts and
their gate weights do not matter). The pathway of an input is the set of (layer, expert) pairs over all
MoE layers; the IoU of two pathways is ``|A ∩ B| / |A ∪ B|`` over those pairs. For k = 1 both reduce to
the top-1 definitions (expert changed in some layer; shared layers over the union).

Built-in adapters:

* :class:`RoutedNetAdapter` — this package's models (top-1, forcing via ``force_routing``).
* :class:`HookAdapter` — a generic adapter: forward hooks on the modules whose qualified names match a
  regular expression (``--router-modules``), whose outputs are router logits ``[B, N]``; the chosen
  experts are the ``top_k`` largest logits. Forcing replaces the logits of the experts NOT in the forced
  set by a value far below the others (detached), so a model that picks its experts by top-k of these
  logits picks the forced set, and gate weights computed from the top-k logits keep their value and
  gradient (gates computed as a softmax over ALL N logits are renormalised over the forced set).

Write your own by subclassing :class:`RoutingAdapter` (see docs/DEVELOPING.md for an example):
implement :meth:`~RoutingAdapter.layer_names` and :meth:`~RoutingAdapter.num_experts`, call
:meth:`~RoutingAdapter.record` once per MoE layer per forward, and (to allow forcing) read
:meth:`~RoutingAdapter.forced_experts` in your model's routing and set ``can_force = True``.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ModelError, require_positive_int

#: A pathway to force: MoE layer name (or ``"*"`` for every layer) -> ``[B]`` or ``[B, k]`` long experts.
Pathway = Mapping[str, Tensor]


@dataclass
class LayerRoute:
    """One MoE layer in one forward: ``logits`` ``[B, N]`` (with autograd history) and ``experts``
    ``[B, k]`` long, sorted ascending (the chosen set)."""

    name: str
    logits: Tensor
    experts: Tensor


class RouteTrace:
    """The routing of the forwards run inside :meth:`RoutingAdapter.trace` (``forwards[i]``: the
    i-th forward's :class:`LayerRoute` list, one per MoE layer in execution order)."""

    def __init__(self) -> None:
        self._forwards: list[list[LayerRoute]] = []

    @property
    def forwards(self) -> list[list[LayerRoute]]:
        return self._forwards

    @property
    def records(self) -> list[LayerRoute]:
        """The last forward's records."""
        if not self.forwards:
            raise RuntimeError("no forward pass was recorded")
        return self.forwards[-1]

    @property
    def layer_names(self) -> list[str]:
        return [r.name for r in self.records]

    def experts(self) -> Tensor:
        """``[L, B, k]`` long: each MoE layer's chosen expert set per input (last forward)."""
        return torch.stack([r.experts for r in self.records]).detach()

    def logits(self) -> list[Tensor]:
        """Per layer ``[B, N]`` router logits of the last forward (with autograd history)."""
        return [r.logits for r in self.records]


# --------------------------------------------------------------------------- set semantics
def as_sets(experts: Tensor) -> Tensor:
    """``[..., B]`` (top-1) or ``[..., B, k]`` -> ``[..., B, k]`` sorted ascending."""
    if experts.dim() == 1:
        experts = experts.unsqueeze(-1)
    return experts.long().sort(dim=-1).values


def routing_changed(a: Tensor, b: Tensor) -> Tensor:
    """``[L, B]`` bool: did the expert SET of each layer change between ``a`` and ``b`` (``[L, B, k]``,
    sorted)? For k = 1: did the expert change."""
    return a.ne(b).any(dim=-1)


def pathway_iou(a: Tensor, b: Tensor) -> Tensor:
    """``[B]`` IoU of two pathways ``[L, B, k]``: sets of (layer, expert) pairs, ``|A ∩ B| / |A ∪ B|``."""
    inter = (a.unsqueeze(-1) == b.unsqueeze(-2)).any(dim=-1).sum(dim=(0, 2)).double()  # [B]
    size = float(a.shape[0] * a.shape[2])
    return inter / (2 * size - inter)


# --------------------------------------------------------------------------- the protocol
class RoutingAdapter:
    """The routing protocol (see the module docstring). Subclasses set the class attributes and
    implement :meth:`layer_names` and :meth:`num_experts`; hooks or the model call :meth:`record`.

    ``top_k``: experts chosen per input and layer. ``can_force``: :meth:`force` works.
    ``shares_routing``: one router drives every layer (then forcing one expert for all layers is the
    whole pathway space). ``name``: shown in results and skip reasons.
    """

    name: str = "custom"
    top_k: int = 1
    can_force: bool = False
    shares_routing: bool = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._traces: list[RouteTrace] = []
        self._forced: Optional[dict[str, Tensor]] = None
        # a new forward starts when the model's root module is called
        self._root_hook = model.register_forward_pre_hook(self._begin_forward)

    # ------------------------------------------------------------------ to implement
    def layer_names(self) -> list[str]:
        """MoE layer names in execution order."""
        raise NotImplementedError

    def num_experts(self) -> list[int]:
        """Experts per MoE layer (same order as :meth:`layer_names`)."""
        raise NotImplementedError

    def router_modules(self) -> list[str]:
        """Qualified names (inside the adapted model) of the modules whose cost is router cost."""
        return []

    def describe(self) -> dict[str, Any]:
        """What the results JSON records about the adapter."""
        return {"adapter": self.name, "top_k": self.top_k, "can_force": self.can_force,
                "layers": self.layer_names(), "experts": self.num_experts()}

    # ------------------------------------------------------------------ for implementations
    @property
    def active(self) -> bool:
        """True while tracing or forcing (hooks can return early otherwise)."""
        return bool(self._traces) or self._forced is not None

    def record(self, name: str, logits: Tensor, experts: Tensor) -> None:
        """Report one MoE layer of the current forward: ``logits`` ``[B, N]``, ``experts`` ``[B]`` or ``[B, k]``."""
        if not self._traces:
            return
        route = LayerRoute(name, logits, as_sets(experts.detach()))
        for tr in self._traces:
            if not tr.forwards:
                tr.forwards.append([])
            tr.forwards[-1].append(route)

    def forced_experts(self, name: str) -> Optional[Tensor]:
        """While :meth:`force` is active: the forced experts ``[B, k]`` of layer ``name``, else ``None``."""
        if self._forced is None:
            return None
        got = self._forced.get(name, self._forced.get("*"))
        return None if got is None else got

    def _begin_forward(self, module: nn.Module, args: Any) -> None:
        for tr in self._traces:
            tr.forwards.append([])

    # ------------------------------------------------------------------ used by attacks and analyses
    @contextmanager
    def trace(self) -> Iterator[RouteTrace]:
        """Record the routing of every forward run inside the block."""
        tr = RouteTrace()
        self._traces.append(tr)
        try:
            yield tr
        finally:
            self._traces.remove(tr)

    @contextmanager
    def force(self, pathway: Pathway) -> Iterator[None]:
        """Make the MoE layers use the given experts (``{layer or "*": [B] or [B, k] long}``)."""
        if not self.can_force:
            raise ModelError(f"the routing adapter {self.name!r} cannot force a pathway")
        forced = {}
        for k, v in pathway.items():
            v = as_sets(torch.as_tensor(v))
            if v.shape[-1] != self.top_k:
                raise ModelError(f"forced pathway for {k!r} has {v.shape[-1]} experts per input, the model uses top-{self.top_k}")
            forced[k] = v
        previous, self._forced = self._forced, forced
        try:
            yield
        finally:
            self._forced = previous

    def remove(self) -> None:
        """Remove the hooks this adapter installed."""
        self._root_hook.remove()


class RoutedNetAdapter(RoutingAdapter):
    """This package's own models (:class:`~robustmoe_bench.models.RoutedNet`), forcing built in: top-1
    channel MoE, and the full-copy ConvMoE/BlockMoE with top-k gates (``top_k = model.top_k``; their
    traces record the k chosen experts per input and layer)."""

    name = "robustmoe-bench"
    top_k = 1
    can_force = True

    def __init__(self, model: nn.Module) -> None:  # no hooks: the model traces itself
        self.model = model
        self.shares_routing = bool(getattr(model, "shares_routing", False))
        self.top_k = int(getattr(model, "top_k", 1))

    def layer_names(self) -> list[str]:
        return [n for n, _ in self.model.moe_layers()]  # type: ignore[operator]

    def num_experts(self) -> list[int]:
        return [int(m.experts) for _, m in self.model.moe_layers()]  # type: ignore[operator]

    def router_modules(self) -> list[str]:
        return [n for n, _ in self.model.named_modules() if "router" in n.split(".")]

    @contextmanager
    def trace(self) -> Iterator[RouteTrace]:
        from ..models import routing_trace

        with routing_trace(self.model) as inner:
            yield _RoutedNetTrace(inner.forwards)

    @contextmanager
    def force(self, pathway: Pathway) -> Iterator[None]:
        from ..models import force_routing

        spec = {}
        for k, v in pathway.items():
            v = as_sets(torch.as_tensor(v))
            if v.shape[-1] != self.top_k:
                raise ModelError(f"this model routes top-{self.top_k}; got {v.shape[-1]} experts for {k!r}")
            spec[k] = v[..., 0] if self.top_k == 1 else v
        with force_routing(self.model, spec):
            yield

    def remove(self) -> None:
        pass


class _RoutedNetTrace(RouteTrace):
    """A view of the model's own routing trace in adapter form (experts as ``[B, k]`` sets, sorted)."""

    def __init__(self, raw: list) -> None:
        super().__init__()
        self._raw = raw

    @property
    def forwards(self) -> list[list[LayerRoute]]:
        return [[LayerRoute(r.name, r.logits, r.expert_set.detach()) for r in fwd] for fwd in self._raw]


class HookAdapter(RoutingAdapter):
    """Generic adapter: hooks the modules whose qualified name matches ``pattern`` (``re.fullmatch``);
    each one's output is a layer's router logits ``[B, N]`` and the chosen experts are its ``top_k``
    largest entries. ``forcing``: allow :meth:`force` (see the module docstring for how)."""

    name = "router-modules"

    def __init__(self, model: nn.Module, pattern: str, top_k: int = 1, forcing: bool = True) -> None:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"--router-modules {pattern!r} is not a valid regular expression: {e}") from None
        require_positive_int(top_k, "--router-top-k")
        mods = [(n, m) for n, m in model.named_modules() if n and rx.fullmatch(n)]
        if not mods:
            some = ", ".join(n for n, _ in list(model.named_modules())[1:9])
            raise ModelError(f"--router-modules '{pattern}' matches no module of the model "
                             f"(names are matched in full, e.g. {some}, ...)")
        super().__init__(model)
        self.pattern = pattern
        self.top_k = top_k
        self.can_force = bool(forcing)
        self._names = [n for n, _ in mods]
        self._experts: dict[str, int] = {}
        self._hooks = [m.register_forward_hook(self._make_hook(n)) for n, m in mods]

    def _make_hook(self, name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: Any, output: Any) -> Optional[Tensor]:
            if not self.active:
                return None
            if not isinstance(output, Tensor) or output.dim() != 2:
                what = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, Tensor) else type(output).__name__
                raise ModelError(f"router module {name!r} returned {what}; the generic adapter needs router logits [B, N]")
            n = output.shape[1]
            if n <= self.top_k:
                raise ModelError(f"router module {name!r} has {n} experts; top-{self.top_k} routing would always choose all")
            self._experts[name] = n
            forced = self.forced_experts(name)
            if forced is None:
                self.record(name, output, output.detach().topk(self.top_k, dim=1).indices)
                return None
            forced = forced.to(output.device)
            if forced.shape[0] != output.shape[0]:
                forced = forced.expand(output.shape[0], -1)
            keep = torch.zeros_like(output, dtype=torch.bool).scatter_(1, forced, True)
            d = output.detach()
            low = d.amin(dim=1, keepdim=True) - (d.amax(dim=1, keepdim=True) - d.amin(dim=1, keepdim=True)) - 1e4
            self.record(name, output, forced)
            return torch.where(keep, output, low)
        return hook

    def layer_names(self) -> list[str]:
        return list(self._names)

    def num_experts(self) -> list[int]:
        missing = [n for n in self._names if n not in self._experts]
        if missing:
            raise ModelError(f"router module {missing[0]!r} did not run in a forward pass (is it a router?)")
        return [self._experts[n] for n in self._names]

    def router_modules(self) -> list[str]:
        return list(self._names)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "router_modules": self.pattern}

    def remove(self) -> None:
        super().remove()
        for h in self._hooks:
            h.remove()


# --------------------------------------------------------------------------- lookup
def get_adapter(model: nn.Module) -> Optional[RoutingAdapter]:
    """The routing adapter of ``model``: its ``routing_adapter`` attribute if set, an adapter over a
    robustmoe-bench MoE model, else ``None`` (no routers)."""
    adapter = getattr(model, "routing_adapter", None)
    if adapter is not None:
        return adapter
    layers = getattr(model, "moe_layers", None)
    if callable(layers) and layers():
        return RoutedNetAdapter(model)
    return None


def require_adapter(model: nn.Module, what: str) -> RoutingAdapter:
    """:func:`get_adapter` or a :class:`ModelError` saying that ``what`` needs routers."""
    adapter = get_adapter(model)
    if adapter is None:
        spec = getattr(model, "spec", None)
        desc = spec.describe() if spec is not None and hasattr(spec, "describe") else type(model).__name__
        raise ModelError(f"{what} needs routers, but {desc} is not an MoE model "
                         "(for your own MoE give --router-modules or --adapter)")
    return adapter


def uniform_pathway(adapter: RoutingAdapter, e: int, batch: int, device: torch.device | str) -> dict[str, Tensor]:
    """Every layer on the expert set ``{e, e+1, ..., e+k-1}`` (mod N) for every input."""
    out = {}
    for name, n in zip(adapter.layer_names(), adapter.num_experts()):
        s = torch.tensor([(e + i) % n for i in range(adapter.top_k)], device=device).sort().values
        out[name] = s.expand(batch, -1).clone()
    return out


def random_pathway(adapter: RoutingAdapter, batch: int, generator: torch.Generator,
                   device: torch.device | str) -> dict[str, Tensor]:
    """Per input and layer a uniformly random set of ``k`` experts."""
    out = {}
    for name, n in zip(adapter.layer_names(), adapter.num_experts()):
        if adapter.top_k == 1:
            out[name] = torch.randint(n, (batch, 1), generator=generator, device=device)
            continue
        r = torch.rand(batch, n, generator=generator, device=device)
        out[name] = r.argsort(dim=1)[:, :adapter.top_k].sort(dim=1).values
    return out


__all__ = ["HookAdapter", "LayerRoute", "Pathway", "RouteTrace", "RoutedNetAdapter", "RoutingAdapter", "as_sets",
           "get_adapter", "pathway_iou", "random_pathway", "require_adapter", "routing_changed", "uniform_pathway"]
