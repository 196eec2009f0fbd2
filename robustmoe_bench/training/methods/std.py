"""``std``: plain cross-entropy training of the Dense model (the non-robust reference)."""
from __future__ import annotations

import torch.nn.functional as F

from ..balance import forwards_balance_loss
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
        if balance is not None:  # the gates' balancing loss (--moe conv/block)
            b = forwards_balance_loss(forwards, balance[0])
            loss = loss + balance[1] * b
            losses["balance"] = float(b.detach())
        update(ctx, loss)
        correct = int((logits.detach().argmax(1) == y).sum())
        return StepResult({"loss": float(loss.detach()), **losses}, correct, int(y.shape[0]))


METHODS.register("std", Standard())
