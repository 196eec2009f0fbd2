"""Training: one TRADES objective (:mod:`.trades`), methods in a registry (:mod:`.methods`), the loop
with resume and data-parallel support (:mod:`.loop`, :mod:`.distributed`).

Example::

    from robustmoe_bench.training import TrainConfig, train
    result = train(TrainConfig.from_preset("fmnist-mini", method="at-moe"), "runs/at-moe")
    result.final_clean_acc, result.final_pgd10_acc, result.ckpt
"""
from __future__ import annotations

from .config import METHOD_KINDS, PRESETS, TrainConfig
from .loop import TrainResult, evaluate_holdout, train, validation_split
from .methods import METHODS, Method, get_method
from .trades import pgd_kl, trades_loss

__all__ = ["TrainConfig", "TrainResult", "train", "PRESETS", "METHODS", "METHOD_KINDS", "Method", "get_method",
           "evaluate_holdout", "validation_split", "pgd_kl", "trades_loss"]
