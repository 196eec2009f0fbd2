"""Training methods, one module each, registered by name in :data:`METHODS` on import.

A method is a :class:`~.base.Method` subclass instance; third-party methods register with
``METHODS.register("name", MyMethod())``.
"""
from __future__ import annotations

from ...errors import ConfigError
from ...registry import Registry
from .base import Batch, Method, Phase, StepContext, StepResult, set_trainable, trades_step, update

METHODS: Registry[Method] = Registry("training method")


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name raises :class:`ConfigError`."""
    if name not in METHODS:
        raise ConfigError(f"unknown training method {name!r}; known: {', '.join(METHODS.names())}")
    return METHODS.get(name)


from . import advmoe, advmoe_public, at_dense, at_moe, at_sdense, at_sparse, std  # noqa: E402,F401  (register built-ins)

__all__ = ["METHODS", "Method", "Phase", "StepContext", "StepResult", "Batch", "get_method", "set_trainable",
           "trades_step", "update"]
