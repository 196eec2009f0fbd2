"""JSON from files a user hands us: parse errors and absurd nesting both become ``json.JSONDecodeError``.

``json.loads`` raises ``RecursionError`` on deeply nested input (a 200 000-deep ``[[[...]]]`` file is a
few hundred kilobytes), and moderately deep input that does parse can still exhaust the stack of the
code that walks it (schema validation, dataclass conversion). Every reader of user-supplied JSON goes
through :func:`loads`, which refuses nesting deeper than :data:`MAX_DEPTH`, so callers keep catching
one exception type and report one clear line.
"""
from __future__ import annotations

import json
from typing import Any

#: Deepest nesting any file format of this package needs is under 10; 64 leaves ample room.
MAX_DEPTH = 64


def _depth_ok(obj: Any, limit: int) -> bool:
    """Iterative (no recursion) check that ``obj`` nests at most ``limit`` containers deep."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > limit:
                return False
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return True


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises ``json.JSONDecodeError`` (never ``RecursionError``) for input nested
    deeper than ``max_depth``."""
    doc = text.decode("utf-8", errors="replace") if isinstance(text, (bytes, bytearray)) else text
    try:
        obj = json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", doc, 0) from None
    if not _depth_ok(obj, max_depth):
        raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", doc, 0)
    return obj


__all__ = ["MAX_DEPTH", "loads"]
