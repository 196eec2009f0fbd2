"""``at-moe``: TRADES adversarial training of the MoE model, routers and experts trained jointly in one step."""
from __future__ import annotations

from . import METHODS
from .base import Batch, Method, StepContext, StepResult, trades_step


class AtMoe(Method):
    name, kind = "at-moe", "moe"

    def step(self, ctx: StepContext, batches: list[Batch]) -> StepResult:
        return trades_step(ctx, batches[0])


METHODS.register("at-moe", AtMoe())
