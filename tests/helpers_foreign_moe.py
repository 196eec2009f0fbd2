"""A Mixture-of-Experts CNN written the way a user outside robustmoe-bench might write one (importable
as ``helpers_foreign_moe:make_top2`` etc. by the CLI in tests).

Unlike our models: every expert is a full copy of the conv (all input and output channels), a softmax
gate on globally pooled features picks the top-k experts per input, the batch is dispatched to the
chosen experts and their outputs are mixed with the gate weights, and ``forward`` returns
``(logits, aux_loss)`` (a load-balancing loss). The model expects normalised inputs
(``(x - 0.5) / 0.25``), so robustmoe-bench must put ``--normalize 0.5/0.25`` inside it.

* ``make_top2``: top-2, gate weights = softmax over the two chosen logits (soft-gated top-k).
* ``make_top1``: top-1, gate weight = softmax over all logits at the chosen expert (Switch style); it
  routes natively through ``MoEConv.forced`` when set, which :class:`GateAdapter` (the user's own
  routing adapter, ``helpers_foreign_moe:GateAdapter``) uses to force pathways.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustmoe_bench.adapters import RoutingAdapter


class MoEConv(nn.Module):
    """``experts`` full-copy 3x3 convs; a linear gate on the pooled input chooses ``k`` per input."""

    def __init__(self, cin: int, cout: int, experts: int, k: int, gate: str) -> None:
        super().__init__()
        self.gate = nn.Linear(cin, experts)
        self.experts = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=1) for _ in range(experts))
        self.bn = nn.BatchNorm2d(cout)
        self.k, self.style = k, gate
        self.forced: Optional[Tensor] = None  # [B, k] experts to use instead of the gate's choice
        self.last_logits: Optional[Tensor] = None
        self.last_choice: Optional[Tensor] = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.gate(x.mean(dim=(2, 3)))
        idx = logits.topk(self.k, dim=1).indices if self.forced is None else self.forced.to(x.device)
        if self.style == "topk-softmax":
            w = torch.softmax(logits.gather(1, idx), dim=1)  # [B, k]
        else:  # switch: probability of the chosen expert under a softmax over all experts
            w = torch.softmax(logits, dim=1).gather(1, idx)
        self.last_logits, self.last_choice = logits, idx
        out = None
        for e, conv in enumerate(self.experts):
            hit = idx == e  # [B, k]
            rows = hit.any(dim=1).nonzero().flatten()
            if rows.numel() == 0:
                continue
            y = conv(x.index_select(0, rows)) * (w * hit).sum(dim=1).index_select(0, rows).view(-1, 1, 1, 1)
            if out is None:
                out = x.new_zeros(x.shape[0], *y.shape[1:])
            out = out.index_add(0, rows, y)
        probs = torch.softmax(logits, dim=1)
        load = F.one_hot(idx, logits.shape[1]).sum(dim=1).float().mean(dim=0)
        aux = (load * probs.mean(dim=0)).sum() * logits.shape[1]
        return F.relu(self.bn(out)), aux  # type: ignore[arg-type]


class ForeignMoE(nn.Module):
    """stem -> MoE conv -> pool -> MoE conv -> pool -> linear; returns ``(logits, aux_loss)``."""

    def __init__(self, k: int, gate: str, experts: int = 4, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.layers = nn.ModuleList([MoEConv(width, 2 * width, experts, k, gate),
                                     MoEConv(2 * width, 2 * width, experts, k, gate)])
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.stem(x)
        aux = x.new_zeros(())
        for i, layer in enumerate(self.layers):
            h, a = layer(h)
            aux = aux + a
            h = F.max_pool2d(h, 2) if i == 0 else h
        return self.head(h.mean(dim=(2, 3))), aux


def make_top2(seed: int = 0, experts: int = 4) -> ForeignMoE:
    torch.manual_seed(seed)
    return ForeignMoE(k=2, gate="topk-softmax", experts=experts)


def make_top1(seed: int = 0, experts: int = 4) -> ForeignMoE:
    torch.manual_seed(seed)
    return ForeignMoE(k=1, gate="switch", experts=experts)


class GateAdapter(RoutingAdapter):
    """The user's own routing adapter for :class:`ForeignMoE`: reads each layer's ``last_logits`` /
    ``last_choice`` after it runs, and forces pathways through the layers' native ``forced`` input."""

    name = "foreign-moe-gates"
    can_force = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, MoEConv)]
        self.top_k = self.layers[0][1].k
        for name, m in self.layers:
            m.register_forward_pre_hook(self._set_forced(name))
            m.register_forward_hook(self._record(name))

    def _set_forced(self, name: str) -> Any:
        def hook(module: MoEConv, args: Any) -> None:
            module.forced = self.forced_experts(name)
        return hook

    def _record(self, name: str) -> Any:
        def hook(module: MoEConv, args: Any, out: Any) -> None:
            self.record(name, module.last_logits, module.last_choice)  # type: ignore[arg-type]
        return hook

    def layer_names(self) -> list[str]:
        return [n for n, _ in self.layers]

    def num_experts(self) -> list[int]:
        return [len(m.experts) for _, m in self.layers]

    def router_modules(self) -> list[str]:
        return [f"{n}.gate" for n, _ in self.layers]


def make_features_only() -> nn.Module:
    """A model whose outputs have no class dimension: ``(features [B, 16], aux)``."""
    torch.manual_seed(0)

    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 16, 3)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            h = self.conv(x).mean(dim=(2, 3))
            return h, h.sum()

    return Features()


def make_raising(width: int = 8) -> nn.Module:
    raise ValueError(f"width {width} is not supported by this factory")


def train_briefly(model: ForeignMoE, x: Tensor, y: Tensor, steps: int = 60, seed: int = 0) -> ForeignMoE:
    """A few Adam steps on ``(x - 0.5) / 0.25`` (the model's own normalisation, outside it)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, x.shape[0], (32,), generator=g)
        logits, aux = model((x[i] - 0.5) / 0.25)
        loss = F.cross_entropy(logits, y[i]) + 0.01 * aux
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
