"""The fmnist-mini preset reaches its accuracy targets (slow: minutes of CPU training)."""
from __future__ import annotations

import time

import pytest

from robustmoe_bench.training import TrainConfig, train


@pytest.mark.slow
def test_fmnist_mini_at_dense_reaches_targets(tmp_path):
    cfg = TrainConfig.from_preset("fmnist-mini", method="at-dense")
    assert cfg.arch == "resnet-mini" and cfg.dataset == "fashion-mnist" and cfg.eps == pytest.approx(0.1)
    t = time.perf_counter()
    res = train(cfg, tmp_path / "at-dense", progress=False)
    wall = time.perf_counter() - t
    # Held-out slice: 500 test examples; PGD-10 (CE, random start, step 2.5*eps/10) at eps = 0.1.
    assert res.final_clean_acc >= 75.0, res.history
    assert res.final_pgd10_acc >= 40.0, res.history
    assert wall <= 240, f"took {wall:.0f}s (budget 4 minutes on 2 cores)"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["at-moe", "advmoe", "at-sparse", "at-sdense"])
def test_fmnist_mini_other_methods_learn(tmp_path, method):
    res = train(TrainConfig.from_preset("fmnist-mini", method=method), tmp_path / method, progress=False)
    assert res.final_clean_acc >= 60.0 and res.final_pgd10_acc >= 25.0, res.history
