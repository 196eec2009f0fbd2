"""Routing trace and routing controls.

``with routing_trace(model) as trace: model(x)`` records, for every forward inside the block and
every MoE layer, the expert chosen for each input and the router scores. ``force_routing`` fixes expert
choices (pathway-forced attacks, targeted analyses, the soft relaxation of adaptive attacks);
``execution`` switches between sparse and masked execution.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor

from .factory import RoutedNet
from .routing import LayerRecord


@dataclass
class RoutingTrace:
    """Records of the forwards run inside :func:`routing_trace`.

    ``forwards[i]`` is the list of :class:`LayerRecord` of the i-th forward, one per MoE layer in
    execution order.
    """

    forwards: list[list[LayerRecord]] = field(default_factory=list)

    @property
    def records(self) -> list[LayerRecord]:
        """The last forward's records."""
        if not self.forwards:
            raise RuntimeError("no forward pass was recorded")
        return self.forwards[-1]

    @property
    def layer_names(self) -> list[str]:
        return [r.name for r in self.records]

    def experts(self) -> Tensor:
        """``[L, B]`` long: the expert chosen by each MoE layer for each input (last forward; top-1
        routing only -- a top-k model's routing is a set per input, see :meth:`expert_sets`)."""
        if any(r.experts_k is not None and r.experts_k.shape[1] > 1 for r in self.records):
            raise RuntimeError("top-k routing chooses a set of experts per input: use expert_sets()")
        return torch.stack([r.expert for r in self.records]).detach()

    def expert_sets(self) -> Tensor:
        """``[L, B, k]`` long: each MoE layer's chosen expert set per input, sorted ascending (last
        forward; ``k = 1`` for top-1 routing)."""
        return torch.stack([r.expert_set for r in self.records]).detach()

    def weights(self) -> list[Tensor]:
        """Per layer ``[B, k]`` gate weights of the chosen experts, in the order of
        :attr:`LayerRecord.experts_k` (top-1 channel layers: ones)."""
        return [r.weights if r.weights is not None else torch.ones_like(r.expert, dtype=r.logits.dtype).unsqueeze(1)
                for r in self.records]

    def logits(self) -> list[Tensor]:
        """Per layer ``[B, N]`` router scores of the last forward (with autograd history)."""
        return [r.logits for r in self.records]

    def clear(self) -> None:
        self.forwards.clear()


def _check(model: torch.nn.Module) -> RoutedNet:
    if not isinstance(model, RoutedNet):
        raise TypeError(f"routing controls need a robustmoe_bench model, got {type(model).__name__}")
    return model


@contextmanager
def routing_trace(model: torch.nn.Module) -> Iterator[RoutingTrace]:
    """Record routing decisions of every forward run inside the block."""
    net = _check(model)
    trace = RoutingTrace()
    previous = net._trace
    net._trace = trace.forwards
    try:
        yield trace
    finally:
        net._trace = previous


@contextmanager
def force_routing(model: torch.nn.Module, experts: int | Tensor | dict[str, int | Tensor]) -> Iterator[None]:
    """Fix expert choices: one int (every layer, every input), a ``[B]`` tensor (every layer), or a
    dict from MoE layer name (or ``"*"``) to an int or ``[B]`` tensor. Top-k layers also take ``[B, k']``
    expert sets (any ``1 <= k' <= N``; weights: softmax over the forced experts' logits)."""
    net = _check(model)
    forced = dict(experts) if isinstance(experts, dict) else {"*": experts}
    previous = net._forced
    net._forced = forced
    try:
        yield
    finally:
        net._forced = previous


@contextmanager
def execution(model: torch.nn.Module, mode: str) -> Iterator[None]:
    """Temporarily run ``model`` in ``"sparse"`` or ``"masked"`` execution."""
    net = _check(model)
    prev = net.execution
    net.execution = mode
    try:
        yield
    finally:
        net.execution = prev
