"""Analyses of trained models: FLOPs and latency, result comparison, shared plotting helpers.

Modules: :mod:`.latency` (measured forward time), :mod:`.compare` (one table over evaluation results), :mod:`.plots` (figure style and
atomic PNG writes); ``GFlops``/``gflops`` are re-exported from :mod:`robustmoe_bench.flops` (below the
analyses and the evaluation, which both count FLOPs). Submodules are imported on first use so ``import robustmoe_bench.analysis`` stays
cheap (fvcore and matplotlib are slow to import).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "GFlops": "flops", "gflops": "flops",
    "LatencyStats": "latency", "measure_latency": "latency",
    "CompareTable": "compare", "compare_results": "compare",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        mod = _EXPORTS[name]
    return getattr(import_module("robustmoe_bench.flops" if mod == "flops" else f"{__name__}.{mod}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
