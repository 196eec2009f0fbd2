"""Measured forward latency, so a FLOP saving is shown as time.

``measure_latency`` times ``model(x)`` under ``torch.inference_mode`` in eval mode with
``time.perf_counter``: ``warmup`` untimed calls (allocator, oneDNN kernel selection), then ``repeats``
timed ones; it reports the median and the 10th/90th percentiles, which are robust to the odd slow call
a shared machine produces.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError


@dataclass(frozen=True)
class LatencyStats:
    """Forward time of one batch in milliseconds: median and 10th / 90th percentiles of ``repeats``."""

    median_ms: float
    p10: float
    p90: float
    repeats: int

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p10": self.p10, "p90": self.p90, "repeats": self.repeats}


def summarize(times_ms: list[float]) -> LatencyStats:
    """Median and 10th/90th percentiles (linear interpolation) of per-call times in ms."""
    if not times_ms:
        raise ConfigError("no timings to summarise")
    s = sorted(times_ms)

    def pct(q: float) -> float:
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return LatencyStats(statistics.median(s), pct(0.10), pct(0.90), len(s))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call of ``fn`` (device-synchronised)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1, repeats: int = 20,
                    warmup: int = 3, x: Tensor | None = None) -> LatencyStats:
    """Latency of ``model`` on a random batch ``[batch, *input_shape]`` in [0, 1] (or the given ``x``).

    Runs in eval mode and ``torch.inference_mode``; the model's training flag is restored.
    """
    if batch < 1 or repeats < 1 or warmup < 0:
        raise ConfigError(f"batch and repeats must be >= 1 and warmup >= 0, got {batch}, {repeats}, {warmup}")
    device = next(model.parameters()).device
    if x is None:
        x = torch.rand(batch, *input_shape, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            times = [time_call(lambda: model(x), device) for _ in range(repeats)]
    finally:
        model.train(was_training)
    return summarize(times)


__all__ = ["LatencyStats", "measure_latency", "summarize", "time_call"]
