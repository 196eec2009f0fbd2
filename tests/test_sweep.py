"""Experts x scale sweep: resume/skip logic with injected train/eval, validation, and a real tiny run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustmoe_bench.analysis.sweep import SweepConfig, parse_experts, parse_scales, run_sweep
from robustmoe_bench.cli import run
from robustmoe_bench.errors import ConfigError
from test_dissect import png_size, write_fmnist

TINY = {"arch": "resnet-tiny", "subset": 16, "batch_size": 8, "epochs": 1, "holdout": 8, "eval_steps": 1,
        "train_steps": 1}


class FakeRuns:
    """Stand-ins for training and evaluation: record calls; accuracy a known function of (N, r)."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.trained: list[str] = []
        self.evaluated: list[str] = []
        self.fail_on = fail_on

    def train(self, cfg, out_dir: Path, resume: bool) -> Path:
        name = out_dir.parent.name
        self.trained.append(name)
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt = out_dir / "ckpt.pt"
        ckpt.write_text(json.dumps({"method": cfg.method, "experts": cfg.experts, "scale": cfg.scale}))
        return ckpt

    def eval(self, ckpt: Path, out: Path) -> dict:
        name = out.parent.name
        if name == self.fail_on:
            raise KeyboardInterrupt  # an interruption in the middle of the sweep
        self.evaluated.append(name)
        c = json.loads(ckpt.read_text())
        robust = 30.0 if c["method"] == "at-dense" else 10.0 * c["experts"] + 20.0 * c["scale"]
        return {"clean_acc": robust + 40.0, "robust_acc": {"pgd-20": robust + 1.0, "worst_case": robust},
                "gflops": {"pathway": 0.01, "router": 0.001, "total": 0.011}, "unreliable": False}


def cfg(**kw) -> SweepConfig:
    base = dict(experts=[2, 4], scales=[0.25, 0.5], method="advmoe", preset="fmnist-mini", train_overrides=TINY,
                suite="quick", n_examples=8)
    base.update(kw)
    return SweepConfig(**base)


def test_grid_resume_skips_finished_cells(tmp_path: Path) -> None:
    runs = FakeRuns(fail_on="N4_r0.25")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg(), tmp_path, train_fn=runs.train, eval_fn=runs.eval)
    # dense first, then the grid in order; N4_r0.25 trained but its evaluation was interrupted
    assert runs.trained == ["dense", "N2_r0.25", "N2_r0.5", "N4_r0.25"]
    assert runs.evaluated == ["dense", "N2_r0.25", "N2_r0.5"]
    assert not (tmp_path / "sweep.json").exists()

    again = FakeRuns()
    res = run_sweep(cfg(), tmp_path, train_fn=again.train, eval_fn=again.eval)
    assert again.trained == ["N4_r0.5"]  # N4_r0.25 only needed its evaluation
    assert again.evaluated == ["N4_r0.25", "N4_r0.5"]
    assert res.skipped == ["dense", "N2_r0.25", "N2_r0.5"]
    assert res.grid() == [[25.0, 30.0], [45.0, 50.0]]
    assert res.dense is not None and res.dense.robust_acc == 30.0 and res.dense.method == "at-dense"

    third = FakeRuns()
    res3 = run_sweep(cfg(), tmp_path, train_fn=third.train, eval_fn=third.eval)
    assert third.trained == [] and third.evaluated == [] and len(res3.skipped) == 5

    d = json.loads((tmp_path / "sweep.json").read_text())
    assert d["schema_version"] == 1
    assert d["config"]["experts"] == [2, 4] and d["config"]["scales"] == [0.25, 0.5]
    assert [(c["experts"], c["scale"], c["robust_acc"]) for c in d["cells"]] == [
        (2, 0.25, 25.0), (2, 0.5, 30.0), (4, 0.25, 45.0), (4, 0.5, 50.0)]
    md = (tmp_path / "sweep.md").read_text()
    assert "| 4 | 45.00 / 85.00 | 50.00 / 90.00 |" in md and "Dense reference (at-dense): 30.00 / 70.00" in md
    w, h = png_size(tmp_path / "sweep.png")
    assert w >= 400 and h >= 300


def test_changed_settings_are_refused_not_mixed(tmp_path: Path) -> None:
    runs = FakeRuns()
    run_sweep(cfg(experts=[2], scales=[0.5], dense_reference=False), tmp_path, train_fn=runs.train, eval_fn=runs.eval)
    with pytest.raises(ConfigError, match="different settings"):
        run_sweep(cfg(experts=[2], scales=[0.5], dense_reference=False, suite="standard"), tmp_path,
                  train_fn=runs.train, eval_fn=runs.eval)


def test_validation() -> None:
    assert parse_experts("2, 4,8") == [2, 4, 8]
    assert parse_scales("0.2,0.5,1") == [0.2, 0.5, 1.0]
    for bad in ("1,2", "2,2", "2,x", "", "2,,4", "2.5"):
        with pytest.raises(ConfigError, match="--experts"):
            parse_experts(bad)
    for bad in ("0", "0.5,1.5", "-0.2", "nan", "a"):
        with pytest.raises(ConfigError, match="--scale"):
            parse_scales(bad)
    with pytest.raises(ConfigError, match="does not train an MoE"):
        cfg(method="at-dense").validate()
    with pytest.raises(ConfigError, match="set by the sweep"):
        cfg(train_overrides={"experts": 3}).validate()


def test_cli_bad_grid_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run(["sweep", "--experts", "1,2", "--scale", "0.5", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "at least 2 experts" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def _real_sweep(tmp_path: Path, dense: bool) -> None:
    data = tmp_path / "fm"
    write_fmnist(data, n_test=8, n_train=16)  # 3 become the validation split, 8 of the other 13 train
    out = tmp_path / "sweep"
    argv = ["sweep", "--experts", "2", "--scale", "0.5", "--method", "advmoe", "--preset", "fmnist-mini",
            "--arch", "resnet-tiny", "--epochs", "1", "--subset", "8", "--batch-size", "8", "--set", "holdout=4",
            "--set", "eval_steps=1", "--set", "train_steps=1", "--suite", "quick", "--n-examples", "4",
            "--data-root", str(data), "--out", str(out)] + ([] if dense else ["--no-dense"])
    assert run(argv) == 0
    d = json.loads((out / "sweep.json").read_text())
    cell = d["cells"][0]
    ev = json.loads(Path(cell["eval_json"]).read_text())
    assert cell["robust_acc"] == ev["robust_acc"]["worst_case"] and cell["clean_acc"] == ev["clean_acc"]
    assert ev["model"]["kind"] == "moe" and ev["model"]["experts"] == 2 and ev["model"]["arch"] == "resnet-tiny"
    assert ev["n_examples"] == 4 and ev["suite"] == "quick"
    if dense:
        dense_ev = json.loads(Path(d["dense"]["eval_json"]).read_text())
        assert dense_ev["model"]["kind"] == "dense"
        assert d["dense"]["robust_acc"] == dense_ev["robust_acc"]["worst_case"]
    else:
        assert d["dense"] is None
    ckpt = Path(cell["checkpoint"])
    mtime = ckpt.stat().st_mtime_ns

    assert run(argv) == 0  # resumed: every cell finished, nothing retrained
    d2 = json.loads((out / "sweep.json").read_text())
    assert d2["skipped"] == (["dense"] if dense else []) + ["N2_r0.5"] and ckpt.stat().st_mtime_ns == mtime
    assert d2["cells"][0]["robust_acc"] == cell["robust_acc"]
    assert png_size(out / "sweep.png")[0] >= 400


def test_real_tiny_sweep_through_the_cli(tmp_path: Path) -> None:
    """Real training and evaluation of one cell; a rerun trains and evaluates nothing."""
    _real_sweep(tmp_path, dense=False)


@pytest.mark.slow
def test_real_tiny_sweep_with_dense_reference(tmp_path: Path) -> None:
    """As above, with the real at-dense reference trained and evaluated too."""
    _real_sweep(tmp_path, dense=True)


# --------------------------------------------------------------------------- design x experts x k
class FakeTopkRuns(FakeRuns):
    """As :class:`FakeRuns`; full-copy cells score ``10 N + k``, channel cells ``10 N + 20 r``."""

    def train(self, cfg, out_dir: Path, resume: bool) -> Path:
        self.trained.append(out_dir.parent.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt = out_dir / "ckpt.pt"
        ckpt.write_text(json.dumps({"method": cfg.method, "experts": cfg.experts, "scale": cfg.scale,
                                    "moe": cfg.moe, "k": cfg.k, "balance": cfg.balance}))
        return ckpt

    def eval(self, ckpt: Path, out: Path) -> dict:
        c = json.loads(ckpt.read_text())
        self.evaluated.append(out.parent.name)
        robust = 10.0 * c["experts"] + (c["k"] if c["moe"] else 20.0 * c["scale"])
        return {"clean_acc": robust + 40.0, "robust_acc": {"worst_case": robust}, "unreliable": False}


def test_design_experts_k_grid(tmp_path: Path) -> None:
    runs = FakeTopkRuns()
    c = cfg(designs=["channel", "conv", "block"], experts=[2, 4], scales=[0.5], ks=[1, 2, 3], dense_reference=False)
    res = run_sweep(c, tmp_path, train_fn=runs.train, eval_fn=runs.eval)
    names = ["N2_r0.5", "N4_r0.5", "conv_N2_k1", "conv_N2_k2", "conv_N4_k1", "conv_N4_k2", "conv_N4_k3",
             "block_N2_k1", "block_N2_k2", "block_N4_k1", "block_N4_k2", "block_N4_k3"]
    assert [x.name for x in res.cells] == names and runs.trained == names  # k > N (k=3, N=2) left out
    conv = json.loads((tmp_path / "cells" / "conv_N4_k3" / "train" / "ckpt.pt").read_text())
    assert (conv["moe"], conv["k"], conv["experts"], conv["scale"], conv["balance"]) == ("conv", 3, 4, None, "switch")
    assert res.topk_cell("block", 4, 2).robust_acc == 42.0 and res.topk_cell("conv", 2, 3) is None
    assert res.cell(4, 0.5).robust_acc == 50.0 and res.cell(4, 0.5).design == "channel"
    md = (tmp_path / "sweep.md").read_text()
    assert "| design, experts N \\ k | 1 | 2 | 3 |" in md
    assert "| conv, 2 | 21.00 / 61.00 | 22.00 / 62.00 | - |" in md and "| 4 | 50.00 / 90.00 |" in md
    assert png_size(tmp_path / "sweep.png")[0] >= 400
    again = FakeTopkRuns()
    res2 = run_sweep(c, tmp_path, train_fn=again.train, eval_fn=again.eval)
    assert again.trained == [] and res2.skipped == names
    # full-copy designs only: the figure is the N x k grid
    only = cfg(designs=["block"], experts=[2], ks=[1, 2], dense_reference=False)
    r3 = run_sweep(only, tmp_path / "b", train_fn=FakeTopkRuns().train, eval_fn=FakeTopkRuns().eval)
    assert [x.name for x in r3.cells] == ["block_N2_k1", "block_N2_k2"]
    md_b = (tmp_path / "b" / "sweep.md").read_text()
    assert png_size(tmp_path / "b" / "sweep.png")[0] >= 400 and "scale r" not in md_b and "| block, 2 |" in md_b


@pytest.mark.parametrize("kw,msg", [
    (dict(ks=[2]), "--k applies to the conv and block designs"),
    (dict(designs=["conv"], experts=[2], ks=[3]), "no cell"),
    (dict(designs=["tiles"]), "unknown design"),
    (dict(designs=["conv", "conv"]), "duplicate"),
    (dict(designs=["conv"], ks=[0]), "integers >= 1"),
    (dict(designs=["conv"], train_overrides={"k": 2}), "set by the sweep itself"),
])
def test_design_validation(kw, msg) -> None:
    with pytest.raises(ConfigError, match=msg):
        cfg(**kw).validate()


def test_cli_sweep_full_copy_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real ConvMoE top-1 cell trained and evaluated through the CLI."""
    data = tmp_path / "fm"
    write_fmnist(data, n_test=8, n_train=16)
    out = tmp_path / "sweep"
    argv = ["sweep", "--design", "conv", "--experts", "2", "--k", "1", "--method", "at-moe", "--preset", "fmnist-mini",
            "--arch", "resnet-tiny", "--epochs", "1", "--subset", "8", "--batch-size", "8", "--set", "holdout=4",
            "--set", "eval_steps=1", "--set", "train_steps=1", "--suite", "quick", "--n-examples", "4",
            "--data-root", str(data), "--out", str(out), "--no-dense"]
    assert run(argv) == 0
    d = json.loads((out / "sweep.json").read_text())
    (cell,) = d["cells"]
    assert cell["name"] == "conv_N2_k1" and cell["design"] == "conv" and cell["k"] == 1
    ev = json.loads(Path(cell["eval_json"]).read_text())
    assert ev["model"]["moe"] == "conv" and ev["model"]["k"] == 1 and cell["robust_acc"] == ev["robust_acc"]["worst_case"]
    assert "design, experts N" in capsys.readouterr().out
    assert run(["sweep", "--design", "channel", "--k", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--k applies to the conv and block designs" in capsys.readouterr().err
