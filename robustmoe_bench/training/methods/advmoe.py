"""``advmoe``: the paper's bi-level AdvMoE training, solved by alternating (SPEC section 4).

Each step takes two DIFFERENT random batches ``B_phi`` and ``B_psi`` (the loop draws them from two
independent permutations of the training set) and

1. with the backbone/expert parameters psi fixed, updates the router parameters phi by one TRADES step
   on ``B_phi``, the attack generated against the current model;
2. with phi fixed (now updated), updates psi by one TRADES step on ``B_psi``, the attack generated
   against the model with the updated routers.

phi and psi are two parameter groups of one optimiser, so they share the learning rate and schedule;
a step leaves the fixed group untouched (no gradient, no momentum update, no weight decay).
"""
from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from ...models.factory import RoutedNet
from . import METHODS
from .base import Batch, Method, StepContext, StepResult, trades_step

ROUTER_GROUP, BACKBONE_GROUP = 0, 1


class AdvMoE(Method):
    name, kind = "advmoe", "moe"
    batches_per_step = 2

    def param_groups(self, net: RoutedNet, phase: int) -> list[list[nn.Parameter]]:
        phi, psi = net.router_parameters(), net.backbone_parameters()
        if not phi:
            raise ConfigError("advmoe needs a model with router parameters (an MoE model)")
        return [phi, psi]

    def step(self, ctx: StepContext, batches: list[Batch]) -> StepResult:
        b_phi, b_psi = batches
        r = trades_step(ctx, b_phi, ROUTER_GROUP)
        b = trades_step(ctx, b_psi, BACKBONE_GROUP)
        losses = dict(b.losses)
        losses["router"] = r.losses["loss"]  # reported as router_loss
        # Training accuracy is reported on the backbone batch (the clean forward before its update).
        return StepResult(losses, b.correct, b.seen)


METHODS.register("advmoe", AdvMoE())
