"""``std``: plain cross-entropy training of the Dense model (the non-robust reference)."""
from __future__ import annotations

import torch.nn.functional as F

from . import METHODS
from .base import Batch, Method, StepContext, StepResult, update


class Standard(Method):
    name, kind = "std", "dense"

    def step(self, ctx: StepContext, batches: list[Batch]) -> StepResult:
        x, y = batches[0]
        logits = ctx.fwd(x)
        loss = F.cross_entropy(logits, y)
        update(ctx, loss)
        correct = int((logits.detach().argmax(1) == y).sum())
        return StepResult({"loss": float(loss.detach()), "natural": float(loss.detach())}, correct, int(y.shape[0]))


METHODS.register("std", Standard())
