"""Routing health: how a routed model uses its experts on the inputs an analysis ran on.

One representation for every place that reports it (training epochs, evaluation results, dissection,
IoU, fixed experts, the comparison table, the zoo and the leaderboard), computed from the expert sets a
:class:`~robustmoe_bench.adapters.routing.RoutingAdapter` traces, so any routed model -- ours or an
external one behind an adapter -- gets the same numbers.

Per MoE layer: each expert's share of the inputs (top-k: the fraction of inputs whose set holds it, so the
shares sum to k), the busiest expert's share (``k/N`` when balanced, 1 when one expert is in every set),
and the utilisation entropy over its maximum ``log2 N`` (1 = balanced, 0 = one expert only). A layer is
**collapsed** when its busiest expert takes at least :data:`COLLAPSED_SHARE` of the inputs: it computes a
single pathway, and neither routing attacks nor dissection can measure anything there. A model is flagged
``collapsed`` when any of its MoE layers is.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

import torch
from torch import Tensor, nn

#: A layer whose busiest expert takes at least this share of the inputs is collapsed.
COLLAPSED_SHARE = 0.99


def utilisation(experts: Tensor, n_experts: int) -> tuple[list[list[float]], list[float]]:
    """Share of inputs per expert per layer ``[L][N]`` (fractions) and routing entropy per layer (bits).

    ``experts``: ``[L, B]`` or ``[L, B, k]`` sets. For top-k the share of expert ``e`` is the fraction of
    inputs whose set contains ``e`` (shares sum to k); the entropy is that of the shares divided by k."""
    shares, entropy = [], []
    for row in experts:
        k = row.shape[1] if row.dim() == 2 else 1
        counts = torch.bincount(row.reshape(-1).cpu(), minlength=n_experts).double()
        p = counts / (row.numel() / k)
        q = p / k
        nz = q[q > 0]
        shares.append(p.tolist())
        entropy.append(float(-(nz * nz.log2()).sum()) if nz.numel() else 0.0)
    return shares, entropy


def collapse(experts: Tensor, n_experts: int) -> tuple[list[float], list[float]]:
    """Expert-collapse metrics per layer of ``experts`` ``[L, B]`` or ``[L, B, k]``: the busiest expert's
    share and the utilisation entropy normalised by its maximum ``log2 N`` (see the module docstring)."""
    shares, entropy = utilisation(experts, n_experts)
    top = math.log2(n_experts) if n_experts > 1 else 1.0
    return [max(s) for s in shares], [e / top for e in entropy]


@dataclass
class ExpertUse:
    """Routing health of one model on ``n_inputs`` inputs (see the module docstring).

    ``share[l][e]``: fraction of the inputs routed to expert ``e`` in MoE layer ``l``; ``busiest_share[l]``
    and ``entropy_normalised[l]``: the collapse metrics; ``collapsed_layers``: names of the layers whose
    busiest share is at least :data:`COLLAPSED_SHARE`; ``collapsed``: any layer is.
    """

    n_inputs: int
    n_experts: int
    layers: list[str]
    share: list[list[float]]
    busiest_share: list[float]
    entropy_normalised: list[float]
    collapsed_layers: list[str]
    collapsed: bool

    @classmethod
    def of(cls, experts: Tensor, n_experts: int, layers: Optional[list[str]] = None) -> "ExpertUse":
        """From expert sets ``experts`` ``[L, B]`` or ``[L, B, k]`` (long) of ``L`` MoE layers."""
        if experts.dim() not in (2, 3) or experts.shape[0] == 0:
            raise ValueError(f"expert sets must be [L, B] or [L, B, k] with L >= 1, got {tuple(experts.shape)}")
        names = list(layers) if layers is not None else [f"layer{i}" for i in range(experts.shape[0])]
        if len(names) != experts.shape[0]:
            raise ValueError(f"{len(names)} layer names for {experts.shape[0]} layers")
        share, _ = utilisation(experts, n_experts)
        busiest, entropy = collapse(experts, n_experts)
        dead = [n for n, b in zip(names, busiest) if b >= COLLAPSED_SHARE]
        return cls(int(experts.shape[1]), int(n_experts), names, [[round(v, 4) for v in s] for s in share],
                   [round(b, 4) for b in busiest],
                   # + 0.0: one expert only gives an entropy of -0.0
                   [round(e, 4) + 0.0 for e in entropy], dead, bool(dead))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExpertUse":
        return cls(**{f: d[f] for f in cls.__dataclass_fields__})

    @property
    def max_busiest(self) -> float:
        """The busiest share over the layers (the layer closest to collapse)."""
        return max(self.busiest_share)

    def summary(self) -> str:
        """One line: ``busiest expert 62-71 % of 500 inputs (balanced: 50 %)`` plus the collapse mark."""
        lo, hi = min(self.busiest_share), max(self.busiest_share)
        span = f"{100 * lo:.0f} %" if round(100 * lo) == round(100 * hi) else f"{100 * lo:.0f}-{100 * hi:.0f} %"
        text = (f"busiest expert {span} of {self.n_inputs} inputs over {len(self.layers)} MoE layer"
                f"{'s' if len(self.layers) != 1 else ''} (balanced: {100 / self.n_experts:.0f} %)")
        return text + (" -- " + self.mark() if self.collapsed else "")

    def mark(self) -> str:
        """``COLLAPSED`` (every layer) or ``COLLAPSED in k of L layers``; empty when routing is healthy."""
        if not self.collapsed:
            return ""
        if len(self.collapsed_layers) == len(self.layers):
            return "COLLAPSED"
        return f"COLLAPSED in {len(self.collapsed_layers)} of {len(self.layers)} layers"


class ExpertUseMeter:
    """Accumulates expert sets over batches (``add(sets)`` with ``[L, B(, k)]``), then :meth:`result`."""

    def __init__(self, n_experts: int, layers: Optional[list[str]] = None) -> None:
        self.n_experts, self.layers = int(n_experts), layers
        self._parts: list[Tensor] = []

    def add(self, sets: Tensor) -> None:
        self._parts.append(sets.detach().cpu())

    def result(self) -> Optional[ExpertUse]:
        if not self._parts:
            return None
        parts = [p if p.dim() == 3 else p.unsqueeze(2) for p in self._parts]
        return ExpertUse.of(torch.cat(parts, dim=1), self.n_experts, self.layers)


def expert_sets(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted labels ``[B]`` and expert sets ``[L, B, k]`` of a routed ``model`` on ``x`` (no grad)."""
    from .routing import require_adapter

    with torch.no_grad(), require_adapter(model, "expert use").trace() as tr:
        logits = model(x)
    return logits.argmax(1), tr.experts()


def expert_use_of(model: nn.Module, x: Tensor, batch_size: int = 250) -> Optional[ExpertUse]:
    """:class:`ExpertUse` of ``model`` on inputs ``x`` ``[n, C, H, W]`` (run in eval mode; the caller's mode
    is restored), or ``None`` for a model without routing."""
    from .routing import get_adapter

    adapter = get_adapter(model)
    if adapter is None:
        return None
    was = model.training
    model.eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    meter = ExpertUseMeter(max(adapter.num_experts()), adapter.layer_names())
    try:
        for i in range(0, x.shape[0], batch_size):
            meter.add(expert_sets(model, x[i:i + batch_size].to(dev))[1])
    finally:
        model.train(was)
    return meter.result()


def forced_change_rate(model: nn.Module, x: Tensor, batch_size: int = 250) -> Optional[float]:
    """Does the routing matter? The fraction of predictions on ``x`` that change when each input is forced
    onto another expert: in every MoE layer its chosen set is shifted by ``j`` (mod N), averaged over
    ``j = 1 .. N-1``. 0 for a model whose experts compute the same function; ``None`` without routing or
    for an adapter that cannot force pathways."""
    from .routing import get_adapter

    adapter = get_adapter(model)
    if adapter is None or not adapter.can_force:
        return None
    was = model.training
    model.eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    n = min(adapter.num_experts())
    changed = total = 0
    try:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].to(dev)
            pred, sets = expert_sets(model, xb)
            names = adapter.layer_names()
            for j in range(1, n):
                path = {name: (sets[li] + j) % n for li, name in enumerate(names)}
                with torch.no_grad(), adapter.force(path):
                    changed += int((model(xb).argmax(1) != pred).sum())
                total += int(xb.shape[0])
    finally:
        model.train(was)
    return changed / total if total else None


def describe_uses(uses: Iterable[Optional[dict[str, Any]]]) -> str:
    """A table cell for expert-use dicts (``ExpertUse.to_dict()``; None for a dense model): ``-`` or the
    busiest share(s) with the collapse mark."""
    cells = []
    for u in uses:
        if not u:
            cells.append("-")
            continue
        e = ExpertUse.from_dict(u)
        cells.append(f"{100 * e.max_busiest:.0f} %" + (f" ({e.mark()})" if e.collapsed else ""))
    return ", ".join(cells)


__all__ = ["COLLAPSED_SHARE", "ExpertUse", "ExpertUseMeter", "collapse", "describe_uses", "expert_sets",
           "expert_use_of", "forced_change_rate", "utilisation"]
