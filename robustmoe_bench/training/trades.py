"""The TRADES objective shared by every robust training method, with its K-step PGD inner maximisation.

``loss = CE(f(x), y) + beta * KL(f(x) || f(x + delta))``, where ``delta`` is found by K steps of
L-inf PGD (random start, step ``step_size``) that maximise the KL term (Zhang et al., 2019).

Two decisions, and why:

* **Eval mode for the attack, train mode for the loss.** The perturbation is generated with batch norm
  using its running statistics (``model.eval()``): the attack then targets the function the model
  actually computes at test time, it does not depend on the composition of the batch, and it does not
  pollute the running statistics with adversarial-search iterates. The loss is then computed in train
  mode, as in ordinary training. The mode the caller had is restored afterwards.
* **Input-only gradients during the attack.** Each PGD step calls ``torch.autograd.grad(loss, x_adv)``,
  so autograd computes only the input gradient; no parameter gradients are formed or accumulated.
  The paper's public code calls ``loss.backward()`` inside its attack loop, which also computes every
  weight gradient at each step (about a third of the step's cost, then thrown away).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .balance import gate_loss


@dataclass(frozen=True)
class TradesLoss:
    """The parts of one TRADES evaluation (``total`` carries autograd history; the rest are floats)."""

    total: Tensor
    natural: float
    robust: float
    correct: int
    balance: float | None = None
    router_z: float | None = None


def _kl(logits_adv: Tensor, p_clean: Tensor) -> Tensor:
    """Batch-mean ``KL(p_clean || softmax(logits_adv))``; ``p_clean`` ``[B, K]`` probabilities."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), p_clean, reduction="batchmean")


def pgd_kl(model: nn.Module, x: Tensor, eps: float, steps: int, step_size: float,
           generator: torch.Generator | None = None, start: str = "normal",
           heads: Sequence[Callable[[Tensor], Tensor]] = ()) -> Tensor:
    """TRADES' inner maximisation: ``x_adv`` ``[B, C, H, W]`` in the L-inf ``eps``-ball around ``x`` and
    in [0, 1], maximising ``KL(f(x) || f(x_adv))``. Runs ``model`` in eval mode; input gradients only.

    ``start``: ``normal`` -- ``x + 0.001 * N(0, 1)`` (TRADES' and the AdvMoE public code's start);
    ``uniform`` -- uniform in the ball. ``heads``: further functions of the input returning logits
    (e.g. the router network's scores) whose KL divergence is added to the maximised objective.
    """
    was_training = model.training
    model.eval()
    fns = [model, *heads]
    try:
        with torch.no_grad():
            p_clean = [F.softmax(f(x), dim=1) for f in fns]
        if start == "normal":
            noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
            x_adv = x + 0.001 * noise
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
        elif start == "uniform":
            noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
            x_adv = (x + (2 * noise - 1) * eps).clamp_(0, 1)
        else:
            raise ValueError(f"unknown TRADES start {start!r}")
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = sum(_kl(f(x_adv), p) for f, p in zip(fns, p_clean))
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = x_adv + step_size * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
        return x_adv.detach()
    finally:
        model.train(was_training)


def trades_loss(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, beta: float,
                balance: tuple | None = None, net: nn.Module | None = None) -> TradesLoss:
    """TRADES loss on clean ``x`` ``[B, C, H, W]``, labels ``y`` ``[B]`` and the adversarial ``x_adv``.

    ``model`` is called in whatever mode it is in (train mode during training) with two separate
    forwards, so the clean and adversarial batches keep their own batch-norm statistics.
    ``balance``: the gate term ``(loss, weight[, z_weight])`` (a balancing loss of the gates and the router
    z-loss, :mod:`.balance`), averaged over both forwards and added to the total; ``net`` is the bare model whose routing is traced (``model``
    may be its DistributedDataParallel wrapper).
    """
    with balance_trace(net if net is not None else model, balance) as forwards:
        logits = model(x)
        logits_adv = model(x_adv)
    natural = F.cross_entropy(logits, y)
    robust = _kl(logits_adv, F.softmax(logits, dim=1))
    total = natural + beta * robust
    parts: dict[str, float] = {}
    if balance is not None:
        g, parts = gate_loss(forwards, balance)
        total = total + g
    correct = int((logits.detach().argmax(1) == y).sum())
    return TradesLoss(total, float(natural.detach()), float(robust.detach()), correct, parts.get("balance"),
                      parts.get("router_z"))


@contextmanager
def balance_trace(net: nn.Module, balance: tuple | None) -> Iterator[list]:
    """Record the routing of the forwards inside the block when a balancing loss needs it; yields the
    list of recorded forwards (empty without ``balance``)."""
    if balance is None:
        yield []
        return
    from ..models import routing_trace

    with routing_trace(net) as tr:
        yield tr.forwards


__all__ = ["TradesLoss", "pgd_kl", "trades_loss"]
