"""``at-sdense``: TRADES adversarial training of the S-Dense (every layer r*C wide)."""
from __future__ import annotations

from . import METHODS
from .base import Batch, Method, StepContext, StepResult, trades_step


class AtSdense(Method):
    name, kind = "at-sdense", "sdense"

    def step(self, ctx: StepContext, batches: list[Batch]) -> StepResult:
        return trades_step(ctx, batches[0])


METHODS.register("at-sdense", AtSdense())
