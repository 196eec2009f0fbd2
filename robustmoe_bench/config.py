"""Typed configuration helpers: strict construction of dataclasses from dicts (unknown keys are
errors) and parsing of attack budgets such as ``"8/255"``."""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
import typing
from typing import Any, TypeVar, Union

from .errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], *, what: str | None = None, strict: bool = False) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`.

    ``strict``: every value must also have its field's declared type (:func:`type_problem`): data read
    from a file is never coerced (``"false"`` is not ``False``, ``"abc"`` not an int)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what or cls.__name__} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown {what or cls.__name__} key(s): {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(names))}"
        )
    if strict:
        hints = typing.get_type_hints(cls)
        for k, v in data.items():
            problem = type_problem(v, hints[k])
            if problem:
                raise ConfigError(f"{what or cls.__name__}: {k!r} {problem}, got {_short(v)}")
    try:
        return cls(**data)
    except TypeError as e:  # a required key missing
        raise ConfigError(f"{what or cls.__name__}: {e}") from None


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def type_problem(value: Any, tp: Any) -> str | None:
    """``None`` if ``value`` (from JSON) has type ``tp`` -- ``int``, ``float`` (ints accepted, not bools,
    finite), ``str``, ``bool``, ``Optional``/``Union``, ``dict[str, X]``, ``list[X]``, ``tuple[X, ...]``,
    ``Any`` or a dataclass (checked as an object) -- else what it must be."""
    if tp is Any:
        return None
    origin = typing.get_origin(tp)
    if origin is Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        problems = [type_problem(value, a) for a in args if a is not type(None)]
        if any(p is None for p in problems):
            return None
        return " or ".join(p for p in problems if p) + (" or null" if type(None) in args else "")
    if tp is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if tp is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "must be a finite number"
    if tp is str:
        return None if isinstance(value, str) else "must be a string"
    if tp is type(None):
        return None if value is None else "must be null"
    if origin is dict:
        if not isinstance(value, dict):
            return "must be an object"
        kt, vt = (typing.get_args(tp) + (Any, Any))[:2]
        for k, v in value.items():
            p = type_problem(v, vt)
            if p:
                return f"entry {k!r} {p}"
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        args = typing.get_args(tp)
        it = args[0] if args else Any
        for i, v in enumerate(value):
            p = type_problem(v, it)
            if p:
                return f"item {i} {p}"
        return None
    if dataclasses.is_dataclass(tp):
        return None if isinstance(value, (dict, tp)) else "must be an object"
    return None


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
