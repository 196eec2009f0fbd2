"""``at-dense``: TRADES adversarial training of the Dense."""
from __future__ import annotations

from . import METHODS
from .base import Batch, Method, StepContext, StepResult, trades_step


class AtDense(Method):
    name, kind = "at-dense", "dense"

    def step(self, ctx: StepContext, batches: list[Batch]) -> StepResult:
        return trades_step(ctx, batches[0])


METHODS.register("at-dense", AtDense())
