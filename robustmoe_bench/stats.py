"""Small exact statistics for accuracies measured on a finite test set.

Every accuracy this package reports is a count ``k`` of ``n`` examples. A reader needs ``n`` and the
uncertainty to know which differences are real:

* :func:`wilson` -- the 95 % Wilson score interval of a proportion (good coverage even at ``k = 0`` or
  ``k = n``, unlike the normal approximation).
* :func:`mcnemar_exact` -- the exact (binomial) McNemar test for two models evaluated on the *same*
  examples: only the discordant examples (right for one, wrong for the other) carry information.
* :func:`binom_sf` -- ``P(X >= k)`` for ``X ~ Binomial(n, p)``, the one-sided exact test the
  gradient-masking checks use.

Plain :mod:`math` only (integers are exact; ``n`` up to a few 10^5 is fast).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054
#: Significance level of the paired test in ``compare`` and on the leaderboard.
ALPHA = 0.05


@dataclass(frozen=True)
class Interval:
    """``k`` of ``n`` with its 95 % Wilson interval; ``acc``, ``low``, ``high`` in percent (0-100)."""

    k: int
    n: int
    low: float
    high: float

    @property
    def acc(self) -> float:
        return 100.0 * self.k / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "n": self.n, "low": round(self.low, 4), "high": round(self.high, 4)}

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def text(self) -> str:
        """``"57.50 [50.6, 64.1]"``."""
        return f"{self.acc:.2f} [{self.low:.1f}, {self.high:.1f}]"


def wilson(k: int, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval of ``k`` successes in ``n`` trials (``n = 0``: the whole [0, 100])."""
    if isinstance(k, bool) or isinstance(n, bool) or not isinstance(k, int) or not isinstance(n, int):
        raise TypeError(f"wilson needs integer counts, got k={k!r}, n={n!r}")
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Interval(0, 0, 0.0, 100.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return Interval(k, n, 100.0 * low, 100.0 * high)


def count_of(acc: float, n: int) -> int:
    """The count behind a percentage rounded to 4 decimals (``acc`` = 100 k / n)."""
    return int(round(acc * n / 100.0))


def binom_sf(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)`` (exact sum; 1.0 for ``k <= 0``)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, n + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
    return min(1.0, total)


def binom_critical(n: int, p: float, alpha: float) -> int:
    """The smallest ``k`` with ``P(X >= k) <= alpha`` for ``X ~ Binomial(n, p)`` (``n + 1`` if none).
    One pass from the top of the distribution (the tail only grows as ``k`` falls)."""
    if p <= 0.0:
        return 1 if alpha >= 0 else n + 1
    if p >= 1.0:
        return n + 1 if alpha < 1 else 0
    lp, lq, lg = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    tail = 0.0
    k = n + 1
    for i in range(n, -1, -1):
        tail += math.exp(lg - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
        if tail > alpha:
            break
        k = i
    return k


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test. ``only_a``: examples right for A and wrong for B; ``only_b``: the reverse;
    ``p_value``: two-sided exact binomial p-value (1.0 when there are no discordant examples)."""

    only_a: int
    only_b: int
    p_value: float

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p_value < alpha


def mcnemar_exact(only_a: int, only_b: int) -> McNemar:
    """Two-sided exact McNemar test from the discordant counts:
    ``p = min(1, 2 * P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``."""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be >= 0")
    m = only_a + only_b
    if m == 0:
        return McNemar(only_a, only_b, 1.0)
    lo = min(only_a, only_b)
    tail = sum(math.comb(m, i) for i in range(lo + 1)) / 2 ** m
    return McNemar(only_a, only_b, min(1.0, 2.0 * tail))


def mcnemar_masks(a: str, b: str) -> McNemar:
    """McNemar test of two per-example outcome strings (``"0110..."``, ``1`` = robust) of equal length."""
    if len(a) != len(b):
        raise ValueError(f"outcome strings differ in length ({len(a)} vs {len(b)})")
    only_a = sum(1 for x, y in zip(a, b) if x == "1" and y == "0")
    only_b = sum(1 for x, y in zip(a, b) if x == "0" and y == "1")
    return mcnemar_exact(only_a, only_b)


def mcnemar_paired(a: str | None, sha_a: str | None, b: str | None, sha_b: str | None) -> McNemar | None:
    """:func:`mcnemar_masks` of two results' per-example outcomes where they are paired: both present and
    over the same evaluated examples (equal ``indices_sha256``, not None); None where they are not."""
    if a is None or b is None or sha_a is None or sha_a != sha_b:
        return None
    return mcnemar_masks(a, b)


__all__ = ["ALPHA", "Z95", "Interval", "McNemar", "binom_critical", "binom_sf", "count_of", "mcnemar_exact",
           "mcnemar_masks", "mcnemar_paired", "wilson"]
