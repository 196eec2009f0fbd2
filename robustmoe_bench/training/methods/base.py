"""What a training method is: a model kind, its phases, which parameters each phase trains, and one
optimisation step. The loop (:mod:`robustmoe_bench.training.loop`) owns data, schedule, checkpoints and
distribution; a method owns only the algorithm, so adding a method is one module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ...models import create_model
from ...models.factory import RoutedNet
from ..trades import pgd_kl, trades_loss

if TYPE_CHECKING:
    from ..config import TrainConfig

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one set of trained parameters and its own cosine schedule, whose peak is
    ``lr_scale`` times the run's learning rate."""

    name: str
    epochs: int
    lr_scale: float = 1.0


@dataclass
class StepContext:
    """What one step needs. ``net`` is the bare model (attacks run on it); ``fwd`` is the model the loss
    is computed with (``net`` itself, or its DistributedDataParallel wrapper)."""

    net: RoutedNet
    fwd: nn.Module
    optimizer: torch.optim.Optimizer
    config: "TrainConfig"
    generator: torch.Generator
    distributed: bool = False
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class StepResult:
    """Per-step numbers for the progress bar and the epoch summary (losses averaged per example)."""

    losses: dict[str, float]
    correct: int
    seen: int


class Method:
    """Base class. Subclasses set ``name``/``kind`` and implement :meth:`step`."""

    name: str = ""
    kind: str = "dense"
    #: batches consumed per step: AdvMoE draws two different ones.
    batches_per_step: int = 1

    def phases(self, cfg: "TrainConfig") -> list[Phase]:
        return [Phase("train", cfg.epochs)]

    def build_model(self, cfg: "TrainConfig") -> RoutedNet:
        """The model the first phase starts from (random initialisation, seeded by the loop)."""
        return create_model(cfg.arch, cfg.model_kind, dataset=cfg.dataset, **cfg.model_options())

    def check_model(self, net: RoutedNet) -> None:
        """Raise :class:`~robustmoe_bench.errors.ConfigError` if this method cannot train ``net``; called
        before the output folder is created, so bad input leaves nothing behind."""

    def prepare(self, net: RoutedNet, phase: int, cfg: "TrainConfig") -> RoutedNet:
        """Called at the start (or on resume) of ``phase``; may return a different model. Must be
        idempotent for a model already prepared for that phase (resume)."""
        return net

    def param_groups(self, net: RoutedNet, phase: int) -> list[list[nn.Parameter]]:
        """Parameter groups trained in ``phase`` (one optimiser group each, same schedule). An MoE model's
        routers are a group of their own (``--router-lr`` scales a group made of router parameters only)."""
        router = net.router_parameters() if net.spec.is_moe else []
        if router:
            return [router, net.backbone_parameters()]
        return [list(net.parameters())]

    def step(self, ctx: StepContext, batches: list[Batch]) -> StepResult:
        raise NotImplementedError


def set_trainable(net: nn.Module, params: list[nn.Parameter]) -> None:
    """Exactly ``params`` require gradients (so DDP and autograd skip the rest)."""
    keep = {id(p) for p in params}
    for p in net.parameters():
        p.requires_grad_(id(p) in keep)


def trades_step(ctx: StepContext, batch: Batch, group: int | None = None) -> StepResult:
    """One TRADES step on ``batch``: attack the current model, then update the parameters of optimiser
    group ``group`` (all groups if None); the other groups stay fixed (no grad, no momentum, no decay)."""
    cfg = ctx.config
    x, y = batch
    x_adv = pgd_kl(ctx.net, x, cfg.eps, cfg.train_steps, cfg.step_size, ctx.generator, cfg.trades_start)
    out = trades_loss(ctx.fwd, x, y, x_adv, cfg.beta, balance=cfg.balance_term(), net=ctx.net)
    update(ctx, out.total, group)
    losses = {"loss": float(out.total.detach()), "natural": out.natural, "robust": out.robust}
    if out.balance is not None:
        losses["balance"] = out.balance
    if out.router_z is not None:
        losses["router_z"] = out.router_z
    return StepResult(losses, out.correct, int(y.shape[0]))


def update(ctx: StepContext, loss: Tensor, group: int | None = None) -> None:
    """Backpropagate ``loss`` into optimiser group ``group`` (or all) and take one optimiser step."""
    opt = ctx.optimizer
    opt.zero_grad(set_to_none=True)
    if group is None:
        loss.backward()
    elif ctx.distributed:
        # DDP averages gradients in hooks that fire during backward(); drop the fixed group's afterwards.
        loss.backward()
        for g, pg in enumerate(opt.param_groups):
            if g != group:
                for p in pg["params"]:
                    p.grad = None
    else:
        # Gradients of the updated group only: the fixed group's weight gradients are never formed.
        params = opt.param_groups[group]["params"]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
    opt.step()

