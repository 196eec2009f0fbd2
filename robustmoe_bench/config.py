"""Typed configuration helpers: strict construction of dataclasses from dicts (unknown keys are
errors) and parsing of attack budgets such as ``"8/255"``."""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], *, what: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown {what or cls.__name__} key(s): {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(names))}"
        )
    return cls(**data)


def parse_eps(value: str | float | int, *, norm: str = "Linf") -> float:
    """Parse an attack radius given as a float or a fraction string (``"8/255"``).

    Inputs live in [0, 1], so an L-inf radius of 1 or more is almost surely in pixel units
    (``8`` meant as ``8/255``); that is rejected with a hint rather than silently accepted.
    """
    text = str(value).strip()
    try:
        eps = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"cannot read eps {text!r}: write a number such as 0.1 or a fraction such as 8/255") from None
    if not math.isfinite(eps) or eps <= 0:
        raise ConfigError(f"eps must be a positive finite number, got {text!r}")
    if norm == "Linf" and eps >= 1:
        raise ConfigError(
            f"eps={text} is not in [0, 1): inputs are images in [0, 1], so this looks like pixel units; "
            f"write {text}/255 instead"
        )
    if norm == "L2" and eps > 255:
        raise ConfigError(f"eps={text} is far too large for an L2 ball on [0, 1] images (pixel units?)")
    return eps


def format_eps(eps: float) -> str:
    """Render an L-inf radius the way RobustBench writes it: ``8/255`` where it is k/255, else decimal."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) >= 1:
        return f"{int(round(k))}/255"
    return f"{eps:g}"
