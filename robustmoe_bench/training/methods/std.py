"""``std``: plain cross-entropy training of the Dense model (the non-robust reference)."""
from __future__ import annotations

import torch.nn.functional as F

from ..balance import gate_loss
from ..trades import balance_trace
from . import METHODS
from .base import Batch, Method, StepContext, StepResult, update


class Standard(Method):
    name, kind = "std", "dense"

    def step(self, ctx: StepContext, batches: list[Batch]) -> StepResult:
        x, y = batches[0]
        balance = ctx.config.balance_term()
        with balance_trace(ctx.net, balance) as forwards:
            logits = ctx.fwd(x)
        natural = F.cross_entropy(logits, y)
        loss = natural
        losses = {"natural": float(natural.detach())}
        if balance is not None:  # the gates' balancing loss and router z-loss (MoE models)
            g, parts = gate_loss(forwards, balance)
            loss = loss + g
            losses.update(parts)
        update(ctx, loss)
        correct = int((logits.detach().argmax(1) == y).sum())
        return StepResult({"loss": float(loss.detach()), **losses}, correct, int(y.shape[0]))


METHODS.register("std", Standard())
