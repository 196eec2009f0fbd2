"""``advmoe-public``: the objective of the AdvMoE authors' public code, beside the paper's Algorithm 1
(``advmoe``). Facts of that code (OPTML-Group/Robust-MoE-CNN, ``train_moe.py``); the code is our own.

Both updates of a step use the SAME batch ``(x, y)``:

1. **Backbone step** (psi; router fixed): the attack maximises ``KL(f(x) || f(x_adv)) +
   KL(r(x) || r(x_adv))`` -- the model's outputs *and* the router network's scores ``r`` -- with the
   TRADES start and steps; the loss is TRADES' ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))``.
2. **Router step** (phi; backbone fixed, updated): a fresh attack of the same kind against the updated
   model, then ``alpha * CE(r(x), y mod N) + beta * KL(r(x) || r(x_adv))``: the router is taught to send
   class ``y`` to expert ``y mod N`` and to keep its scores under attack. The paper does not describe
   this class-to-expert supervision; ``alpha`` is the public code's 6 (:data:`ROUTER_ALPHA`).

``r`` is always applied to the normalised image, as the model's forward applies it. (The public code's
training step feeds its router the raw [0, 1] image for these two losses but the normalised one inside the
model's forward; we do not copy that inconsistency.)

Only models with one router network (``--router resnet`` or ``shared``) have the scores ``r``; a
per-layer router design is a clear error.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...models.factory import RoutedNet
from ..trades import _kl, pgd_kl, trades_loss
from . import METHODS
from .base import Batch, Method, StepContext, StepResult, update

ROUTER_GROUP, BACKBONE_GROUP = 0, 1
#: Weight of the router's class-to-expert cross-entropy (the public code's value).
ROUTER_ALPHA = 6.0


class AdvMoEPublic(Method):
    name, kind = "advmoe-public", "moe"

    def check_model(self, net: RoutedNet) -> None:
        if not net.shares_routing:
            raise ConfigError(f"advmoe-public needs one router network (--router resnet or shared); "
                              f"{net.spec.describe()} routes layer by layer")

    def param_groups(self, net: RoutedNet, phase: int) -> list[list[nn.Parameter]]:
        self.check_model(net)
        return [net.router_parameters(), net.backbone_parameters()]

    def _attack(self, ctx: StepContext, x):
        cfg = ctx.config
        return pgd_kl(ctx.net, x, cfg.eps, cfg.train_steps, cfg.step_size, ctx.generator, cfg.trades_start,
                      heads=[ctx.net.router_scores])

    def step(self, ctx: StepContext, batches: list[Batch]) -> StepResult:
        (x, y), cfg, net = batches[0], ctx.config, ctx.net
        out = trades_loss(ctx.fwd, x, y, self._attack(ctx, x), cfg.beta)
        update(ctx, out.total, BACKBONE_GROUP)

        x_adv = self._attack(ctx, x)
        scores = net.router_scores(x)
        ce = F.cross_entropy(scores, y % net.spec.experts)
        kl = _kl(net.router_scores(x_adv), F.softmax(scores, dim=1))
        router_loss = ROUTER_ALPHA * ce + cfg.beta * kl
        update(ctx, router_loss, ROUTER_GROUP)
        return StepResult({"loss": float(out.total.detach()), "natural": out.natural, "robust": out.robust,
                           "router": float(router_loss.detach())}, out.correct, int(y.shape[0]))


METHODS.register("advmoe-public", AdvMoEPublic())
