"""Wilson intervals, the exact McNemar test and the binomial tail against values computed by hand /
published tables (R's binom.test, prop.test without continuity correction)."""
from __future__ import annotations

import pytest

from robustmoe_bench.stats import binom_critical, binom_sf, mcnemar_exact, mcnemar_masks, wilson


def test_wilson_known_values() -> None:
    # 50 of 100: 0.5 +- 1.96 * sqrt(.25/100 + 1.96^2/40000) / (1 + 1.96^2/100) -> [40.38, 59.62]
    iv = wilson(50, 100)
    assert iv.low == pytest.approx(40.383, abs=1e-2) and iv.high == pytest.approx(59.617, abs=1e-2)
    # 0 of 50: lower bound exactly 0, upper z^2/(n+z^2) = 7.135 %
    iv = wilson(0, 50)
    assert iv.low == 0.0 and iv.high == pytest.approx(7.135, abs=1e-2)
    iv = wilson(50, 50)
    assert iv.high == 100.0 and iv.low == pytest.approx(92.865, abs=1e-2)
    # n = 50 around 60 %: +- about 13 points, the figure that motivated this (issue 12)
    iv = wilson(30, 50)
    assert iv.low == pytest.approx(46.18, abs=0.05) and iv.high == pytest.approx(72.39, abs=0.05)
    assert wilson(0, 0).to_dict() == {"k": 0, "n": 0, "low": 0.0, "high": 100.0}
    with pytest.raises(ValueError):
        wilson(5, 4)
    with pytest.raises(TypeError):
        wilson(True, 4)


def test_mcnemar_exact_known_values() -> None:
    # b = 1, c = 9: 2 * P(X <= 1 | 10, .5) = 2 * 11/1024 = 0.02148
    assert mcnemar_exact(1, 9).p_value == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1).significant() and not mcnemar_exact(3, 7).significant()
    assert mcnemar_exact(3, 7).p_value == pytest.approx(2 * (1 + 10 + 45 + 120) / 1024)
    assert mcnemar_exact(0, 0).p_value == 1.0 and mcnemar_exact(5, 5).p_value == 1.0
    # concordant examples carry no information: only the discordant ones matter
    t = mcnemar_masks("1100110", "1000111")
    assert (t.only_a, t.only_b) == (1, 1) and t.p_value == 1.0
    with pytest.raises(ValueError):
        mcnemar_masks("10", "1")


def test_binomial_tail_and_critical_count() -> None:
    assert binom_sf(0, 10, 0.3) == 1.0 and binom_sf(11, 10, 0.3) == 0.0
    assert binom_sf(10, 10, 0.5) == pytest.approx(1 / 1024)
    assert binom_sf(9, 10, 0.5) == pytest.approx(11 / 1024)
    k = binom_critical(100, 0.02, 0.01)
    assert binom_sf(k, 100, 0.02) <= 0.01 < binom_sf(k - 1, 100, 0.02)
    assert k == 7
