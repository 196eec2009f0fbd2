"""``at-sparse``: Hydra-style structured pruning under TRADES, three phases from one command.

1. ``pretrain``: TRADES on the Dense model (skipped with ``from_dense``: the Dense checkpoint is loaded).
2. ``prune``: the weights are copied into a ``sparse``-kind model of the same architecture; every
   MoE-position conv gets one score per output channel, initialised in proportion to the filter's
   weight norm; the top ``r*C`` channels are kept through a straight-through top-k, and ONLY the scores
   are trained with TRADES.
3. ``finetune``: the mask is fixed to the final top-k, scores frozen, weights trained with TRADES.

Each phase has its own cosine schedule from the base learning rate; the finetune phase's peak is
``finetune_lr`` times it (Hydra finetunes at a tenth of its training rate; the epoch split is in
:class:`~robustmoe_bench.training.config.TrainConfig`).
"""
from __future__ import annotations

import dataclasses

from torch import nn

from ...checkpoint import load_checkpoint
from ...errors import CheckpointError
from ...models import RoutedConv2d, build_model, create_model
from ...models.factory import RoutedNet
from . import METHODS
from .base import Batch, Method, Phase, StepContext, StepResult, trades_step

PRETRAIN, PRUNE, FINETUNE = 0, 1, 2


def masked_convs(net: nn.Module) -> list[RoutedConv2d]:
    return [m for m in net.modules() if isinstance(m, RoutedConv2d) and m.channel_mask is not None]


def to_sparse(dense: RoutedNet) -> RoutedNet:
    """A ``sparse``-kind copy of a Dense model: same weights, masks initialised from the filter norms."""
    spec = dataclasses.replace(dense.spec, kind="sparse")
    net = build_model(spec).to(next(dense.parameters()).device)
    missing, unexpected = net.load_state_dict(dense.state_dict(), strict=False)
    if unexpected or any(".channel_mask." not in k for k in missing):
        raise RuntimeError(f"dense and sparse state dicts disagree: missing {missing}, unexpected {unexpected}")
    for conv in masked_convs(net):
        conv.channel_mask.init_from_weight(conv.weight)  # type: ignore[union-attr]
    return net


class AtSparse(Method):
    name, kind = "at-sparse", "sparse"

    def phases(self, cfg) -> list[Phase]:
        pre, prune, fine = cfg.phase_epochs
        fine_lr = 1.0 if cfg.finetune_lr is None else float(cfg.finetune_lr)
        return [Phase("pretrain", pre), Phase("prune", prune), Phase("finetune", fine, fine_lr)]

    def build_model(self, cfg) -> RoutedNet:
        if cfg.from_dense is None:
            return create_model(cfg.arch, "dense", dataset=cfg.dataset)
        ck = load_checkpoint(cfg.from_dense)
        spec = ck.spec
        if spec.kind != "dense":
            raise CheckpointError(f"--from-dense needs a Dense checkpoint; {cfg.from_dense} holds a {spec.kind} model")
        if spec.arch != cfg.arch or spec.dataset != cfg.dataset:
            raise CheckpointError(
                f"--from-dense checkpoint is {spec.arch} on {spec.dataset}, but this run is {cfg.arch} on {cfg.dataset}"
            )
        return ck.model.train()

    def prepare(self, net: RoutedNet, phase: int, cfg) -> RoutedNet:
        if phase == PRETRAIN:
            return net
        if net.spec.kind == "dense":
            net = to_sparse(net)
        for conv in masked_convs(net):
            cm = conv.channel_mask
            assert cm is not None
            if phase == PRUNE:
                cm.learning = True
            else:
                cm.freeze()  # idempotent: the scores no longer change after the prune phase
                cm.learning = False
        return net

    def param_groups(self, net: RoutedNet, phase: int) -> list[list[nn.Parameter]]:
        scores = [conv.channel_mask.scores for conv in masked_convs(net)]  # type: ignore[union-attr]
        if phase == PRUNE:
            return [scores]
        ids = {id(p) for p in scores}
        return [[p for p in net.parameters() if id(p) not in ids]]

    def step(self, ctx: StepContext, batches: list[Batch]) -> StepResult:
        return trades_step(ctx, batches[0])


METHODS.register("at-sparse", AtSparse())
