"""Evaluation: the worst-case cascade, suites, checks, results JSON, resume after SIGKILL, torchrun
sharding, AutoAttack equality with a direct pyautoattack run, and clean failures on bad input."""
from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from robustmoe_bench import create_model, save_checkpoint
from robustmoe_bench.cli import run as cli_run
from robustmoe_bench.data import as_tensors, load_dataset, subset_indices
from robustmoe_bench.errors import ConfigError
from robustmoe_bench.evaluation import SUITES, EvalResult, evaluate, get_suite, plan, run_cascade
from robustmoe_bench.evaluation.checks import deterministic_routing, eps_increase, zero_gradients
from robustmoe_bench.evaluation.results import TIME_KEYS
from robustmoe_bench.evaluation.state import StateFolder
from robustmoe_bench.evaluation.suites import PlannedAttack, batch_attack_seed

REPO = Path(__file__).resolve().parents[1]
EPS = "0.03"  # the synthetic classes are 0.1 apart in brightness: 0.03 leaves some examples robust

RESULT_KEYS = {
    "schema_version", "suite", "dataset", "threat_model", "eps", "eps_str", "n_examples", "seed", "clean_acc",
    "robust_acc", "attacks", "routing", "router_robustness", "flags", "unreliable", "gflops", "seconds", "model",
    "training", "checkpoint", "checkpoint_sha256", "package_version", "worst_case_attacks",
    "n_total", "robust_acc_alone", "intervals", "examples", "expert_use", "estimate",
}


# ------------------------------------------------------------------ tiny data set and model

def synth(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST-shaped uint8 images whose class is their brightness level (0.05, 0.15, ... 0.95)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = ((y.float() + 0.5) / 10).view(-1, 1, 1, 1) + (torch.rand(n, 1, 28, 28, generator=g) - 0.5) * 0.1
    return (x * 255).round().clamp(0, 255).to(torch.uint8), y


def write_idx(folder: Path, prefix: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    imgs = images.numpy().reshape(-1, 28, 28).astype(np.uint8)
    labs = labels.numpy().astype(np.uint8)
    for stem, magic, arr in ((f"{prefix}-images-idx3-ubyte", 2051, imgs), (f"{prefix}-labels-idx1-ubyte", 2049, labs)):
        data = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
        (folder / f"{stem}.gz").write_bytes(gzip.compress(data))


@contextmanager
def single_thread() -> Iterator[None]:
    """Same arithmetic as the OMP_NUM_THREADS=1 subprocesses (torchrun sets it too)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A data folder (60 test examples) and a briefly trained resnet-tiny MoE checkpoint."""
    root = tmp_path_factory.mktemp("evaldata")
    data = root / "fmnist"
    data.mkdir()
    xtr, ytr = synth(320, 1)
    write_idx(data, "train", xtr, ytr)
    write_idx(data, "t10k", *synth(60, 2))
    torch.manual_seed(0)
    # softmax STE: the public code's identity STE adds the chosen router score's gradient to the input
    # gradient, which can misdirect plain PGD on such a briefly trained model (the suite's adaptive
    # attacks exist for that); this fixture is the "plain" model the masking checks must pass
    model = create_model("resnet-tiny", kind="moe", dataset="fashion-mnist", ste="softmax")
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    with single_thread():
        for _ in range(50):
            idx = torch.randint(0, 320, (32,))
            loss = nn.functional.cross_entropy(model(xtr[idx].float() / 255), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    ckpt = root / "tiny.safetensors"
    save_checkpoint(ckpt, model, training={"method": "test-ce", "steps": 50})
    return {"data": data, "ckpt": ckpt, "root": root}


def sub_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ------------------------------------------------------------------ suites and the cascade (fake attacks)

class Toy(nn.Module):
    """Class 1 iff pixel (0, 0, 0) > 0.5, else class 0. Pixel (0, 0, 1) carries an example id / 100."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, 0, 0] - 0.5
        return torch.stack([-s, s], 1) * 10


class Breaker:
    """Fake attack: pushes pixel (0, 0, 0) up by eps (flipping Toy to class 1) on the examples in ``ids``."""

    calls: list[tuple[str, list[int], int]] = []

    def __init__(self, name: str, eps: float, norm: str = "Linf", *, seed: int = 0, ids: tuple[int, ...] = (),
                 overshoot: float = 1.0) -> None:
        self.name, self.eps, self.seed, self.ids, self.overshoot = name, eps, seed, set(ids), overshoot

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "seed": self.seed, "ids": sorted(self.ids)}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ids = (x[:, 0, 0, 1] * 100).round().long().tolist()
        Breaker.calls.append((self.name, ids, self.seed))
        out = x.clone()
        hit = torch.tensor([i in self.ids for i in ids], dtype=torch.bool)
        out[hit, 0, 0, 0] += self.eps * self.overshoot
        return out


def toy_batch(n: int = 8, wrong: tuple[int, ...] = (7,)) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(n, 1, 4, 4)
    x[:, 0, 0, 0] = 0.45
    x[list(wrong), 0, 0, 0] = 0.6
    x[:, 0, 0, 1] = torch.arange(n) / 100
    return x, torch.zeros(n, dtype=torch.long)


def test_cascade_attacks_only_still_robust_examples_and_keeps_worst_case() -> None:
    Breaker.calls = []
    attacks = [
        PlannedAttack("a", "a", {"ids": (1, 2)}),
        PlannedAttack("b", "b", {"ids": (2, 3)}),
        PlannedAttack("skip", "skip", {}, skipped="not an MoE model"),
        PlannedAttack("r", "r", {"ids": (4, 7)}, scope="all"),
    ]
    x, y = toy_batch()
    rec = run_cascade(Toy(), x, y, attacks, eps=0.1, norm="Linf", seed=5, batch_index=3, factory=Breaker)
    assert rec.clean == "11111110"
    # "a" sees the 7 clean-correct examples; "b" only those "a" left; the router-like "r" sees everything
    assert [c[:2] for c in Breaker.calls] == [("a", [0, 1, 2, 3, 4, 5, 6]), ("b", [0, 3, 4, 5, 6]),
                                              ("r", [0, 1, 2, 3, 4, 5, 6, 7])]
    assert rec.attacks["a"].broken == "01100000" and rec.attacks["a"].n_attacked == 7
    assert rec.attacks["b"].broken == "00010000" and rec.attacks["b"].n_attacked == 5
    assert rec.attacks["r"].broken == "00001000" and rec.attacks["r"].n_attacked == 8  # 7 was wrong already
    assert "skip" not in rec.attacks
    seeds = [c[2] for c in Breaker.calls]
    assert len(set(seeds)) == 3 and seeds == [batch_attack_seed(5, 3, p) for p in (0, 1, 3)]
    assert batch_attack_seed(5, 3, 0) != batch_attack_seed(5, 4, 0) != batch_attack_seed(6, 3, 0)


def test_alone_scope_measures_autoattack_alone_and_still_feeds_the_worst_case() -> None:
    """AutoAttack's parts (scope "alone", one group) run on every clean-correct example not fooled by an
    earlier part, whatever PGD broke: their group's number is AutoAttack alone, as RobustBench means it;
    the worst case still takes every attack."""
    from robustmoe_bench.evaluation.runner import _assemble_masks, alone_masks

    Breaker.calls = []
    attacks = [
        PlannedAttack("pgd", "pgd", {"ids": (1, 2, 3)}),
        PlannedAttack("aa1", "aa1", {"ids": (2,)}, scope="alone", group="aa"),
        PlannedAttack("aa2", "aa2", {"ids": (2, 5)}, scope="alone", group="aa"),
    ]
    x, y = toy_batch()
    rec = run_cascade(Toy(), x, y, attacks, eps=0.1, norm="Linf", seed=0, batch_index=0, factory=Breaker)
    # aa1 sees every clean-correct example (PGD's breaks included); aa2 all but the one aa1 fooled
    assert [c[:2] for c in Breaker.calls] == [("pgd", [0, 1, 2, 3, 4, 5, 6]), ("aa1", [0, 1, 2, 3, 4, 5, 6]),
                                              ("aa2", [0, 1, 3, 4, 5, 6])]
    assert rec.attacks["aa1"].fooled == "00100000" and rec.attacks["aa1"].broken == "00000000"
    assert rec.attacks["aa2"].fooled == "00000100" and rec.attacks["aa2"].broken == "00000100"
    clean, broken, fooled = _assemble_masks([rec], attacks)
    alone = alone_masks(attacks, clean, fooled)
    assert {k: int(v.sum()) for k, v in alone.items()} == {"pgd": 4, "aa1": 6, "aa2": 5, "aa": 5}
    worst = clean & ~broken["pgd"] & ~broken["aa1"] & ~broken["aa2"]
    assert int(worst.sum()) == 3  # 0, 4, 6


def test_cascade_refuses_attack_output_outside_the_ball() -> None:
    x, y = toy_batch()
    bad = [PlannedAttack("a", "a", {"ids": (1,), "overshoot": 2.0})]
    with pytest.raises(RuntimeError, match="outside the Linf ball"):
        run_cascade(Toy(), x, y, bad, eps=0.1, norm="Linf", seed=0, batch_index=0, factory=Breaker)


def test_suites_are_registered_cheap_first_and_planned_per_model() -> None:
    assert set(SUITES.names()) >= {"quick", "standard", "full", "autoattack"}
    assert [s.name for s in get_suite("quick").attacks] == ["pgd-20"]
    assert [s.name for s in get_suite("standard").attacks] == ["pgd-50", "autoattack"]
    paper = get_suite("paper").attacks
    assert [s.name for s in paper] == ["pgd-50-paper", "autoattack"]
    # the mini Table 1 runs the standard suite's attacks (same order, same settings) plus the paper's PGD-50
    # and full's attacks on the routing (AutoAttack as its four attacks, as in full: the masking checks then
    # see APGD-T and FAB-T as white-box)
    table1 = get_suite("table1").attacks
    assert [s.name for s in table1] == ["pgd-50", "pgd-50-paper", "soft-pgd", "joint", "pathway-forced",
                                        "router-untargeted", "router-targeted", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert table1[0] == get_suite("standard").attacks[0] and table1[2:] == get_suite("full").attacks[1:]
    assert all(s.moe_only for s in table1[2:7])
    planned = {p.name: p.skipped for p in plan(get_suite("table1"), is_moe=False, experts=0)}
    assert all(planned[n] for n in ("soft-pgd", "joint", "router-untargeted")) and not planned["pgd-50-paper"]
    assert [p.name for p in plan(get_suite("table1"), is_moe=True, experts=2) if not p.skipped][6:8] == \
        ["router-targeted-e0", "router-targeted-e1"]
    assert get_suite("table1").checks and not get_suite("standard").checks
    from robustmoe_bench.attacks import create_attack
    pgd = create_attack(paper[0].attack, eps=8 / 255, **dict(paper[0].hyper))
    assert pgd.steps == 50 and pgd.step_size == pytest.approx(2 / 255)  # the public code's step at 8/255
    with pytest.raises(ConfigError, match="not both"):
        create_attack("pgd", eps=0.1, step_size=0.01, step_fraction=0.25)
    full = [s.name for s in get_suite("full").attacks]
    aa = ["apgd-ce", "apgd-t", "fab-t", "square"]  # AutoAttack standard as its four attacks, last
    assert full[0] == "pgd-50" and full[-4:] == aa and get_suite("full").checks
    assert [s.group for s in get_suite("full").attacks][-4:] == ["autoattack"] * 4
    assert [s.whitebox for s in get_suite("full").attacks][-4:] == [True, True, True, False]
    # AutoAttack runs on every clean-correct example in both suites: its number is AutoAttack alone
    assert [s.scope for s in get_suite("full").attacks][-4:] == ["alone"] * 4
    assert [s.scope for s in get_suite("standard").attacks] == ["robust", "alone"]
    dense = plan(get_suite("full"), is_moe=False, experts=1)
    assert [a.name for a in dense if a.skipped is None] == ["pgd-50"] + aa
    assert all(a.skipped == "not an MoE model (no routers)" for a in dense if a.name not in ["pgd-50"] + aa)
    moe = plan(get_suite("full"), is_moe=True, experts=3)
    targeted = [a for a in moe if a.attack == "router-targeted"]
    assert [(a.name, a.hyper["target"], a.scope) for a in targeted] == [
        ("router-targeted-e0", 0, "all"), ("router-targeted-e1", 1, "all"), ("router-targeted-e2", 2, "all")]
    with pytest.raises(ConfigError, match="unknown suite 'fast'"):
        get_suite("fast")


# ------------------------------------------------------------------ results JSON, against an independent recomputation

def test_quick_suite_json_matches_direct_pgd(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    with single_thread():
        code = cli_run(["evaluate", str(setup["ckpt"]), "--suite", "quick", "--n-examples", "40", "--eps", EPS,
                        "--batch-size", "16", "--seed", "3", "--data-root", str(setup["data"]), "--out", str(out), "-q"])
    assert code == 0
    d = json.loads(out.read_text())
    assert set(d) == RESULT_KEYS and d["schema_version"] == 1 and d["estimate"] is False
    assert not StateFolder.for_output(out).exists()  # the state is removed once the results are written
    res = EvalResult.from_json(out.read_text())
    assert res.to_dict() == d

    # recompute every number by hand: same subset, same per-batch seeds, the attack called directly
    from robustmoe_bench.attacks import create_attack
    from robustmoe_bench.checkpoint import load_checkpoint
    from robustmoe_bench.models import routing_trace

    model = load_checkpoint(setup["ckpt"]).model
    test = load_dataset("fashion-mnist", "test", root=setup["data"])
    idx = subset_indices(len(test), 40, 3)
    clean = robust = changed = 0
    with single_thread():
        for b in range(3):
            x, y = as_tensors(test, idx[b * 16:(b + 1) * 16])
            with torch.no_grad(), routing_trace(model) as tr:
                ok = model(x).argmax(1) == y
            e_clean = tr.experts()
            clean += int(ok.sum())
            xa = create_attack("pgd", 0.03, steps=20, seed=batch_attack_seed(3, b, 0))(model, x[ok], y[ok])
            with torch.no_grad(), routing_trace(model) as tr:
                robust += int((model(xa).argmax(1) == y[ok]).sum())
            changed += int((tr.experts() != e_clean[:, ok]).any(0).sum())
    assert d["clean_acc"] == pytest.approx(100 * clean / 40, abs=1e-4)
    assert d["robust_acc"] == {"pgd-20": pytest.approx(100 * robust / 40, abs=1e-4),
                               "worst_case": pytest.approx(100 * robust / 40, abs=1e-4)}
    assert 0 < robust < clean  # the fixture leaves something to measure
    assert d["routing"]["pgd-20"] == pytest.approx(100 * changed / 40, abs=1e-4)
    assert d["router_robustness"]["pgd-20"] == pytest.approx(100 - 100 * changed / 40, abs=1e-4)
    a = d["attacks"][0]
    assert (a["name"], a["n_attacked"], a["n_broken"], a["params"]["steps"]) == ("pgd-20", clean, clean - robust, 20)
    assert d["eps"] == 0.03 and d["eps_str"] == "0.03" and d["threat_model"] == "Linf" and d["seed"] == 3
    assert d["model"]["kind"] == "moe" and d["training"]["method"] == "test-ce"
    # uncertainty: every accuracy carries its count, n and the 95 % Wilson interval
    from robustmoe_bench.stats import wilson

    assert d["n_total"] == len(test) and d["n_examples"] == 40
    assert d["intervals"]["clean_acc"] == wilson(clean, 40).to_dict()
    assert d["intervals"]["robust_acc"]["pgd-20"] == wilson(robust, 40).to_dict()
    assert d["intervals"]["robust_acc"]["worst_case"] == wilson(robust, 40).to_dict()
    assert d["intervals"]["router_robustness"]["pgd-20"] == wilson(40 - changed, 40).to_dict()
    lo, hi = d["intervals"]["robust_acc"]["worst_case"]["low"], d["intervals"]["robust_acc"]["worst_case"]["high"]
    assert lo < d["robust_acc"]["worst_case"] < hi and hi - lo > 10  # n = 40: wide, and said so
    # the first attack of the cascade is also measured alone; per-example outcomes for paired tests
    assert d["robust_acc_alone"] == {"pgd-20": pytest.approx(100 * robust / 40, abs=1e-4)}
    assert d["examples"]["clean"].count("1") == clean and d["examples"]["worst_case"].count("1") == robust
    assert len(d["examples"]["clean"]) == 40 and len(d["examples"]["indices_sha256"]) == 64
    assert d["checkpoint"] == str(setup["ckpt"]) and len(d["checkpoint_sha256"]) == 64
    assert d["flags"] == {} and d["unreliable"] is False
    assert d["gflops"] is None or d["gflops"]["total"] > 0
    assert d["worst_case_attacks"] == ["pgd-20"]


def test_results_round_trip_and_strict_reading(tmp_path: Path) -> None:
    good = {"schema_version": 1, "suite": "quick"}
    with pytest.raises(ConfigError, match="schema_version 2"):
        EvalResult.from_dict({**good, "schema_version": 2})
    with pytest.raises(ConfigError, match="not valid JSON"):
        EvalResult.from_json("{")


# ------------------------------------------------------------------ resume

def deterministic(path: Path) -> dict[str, Any]:
    d = EvalResult.load(path).deterministic_dict()
    assert "seconds" in TIME_KEYS and "seconds" not in d
    return d


def test_resume_after_sigkill_gives_identical_results(setup: dict[str, Path], tmp_path: Path) -> None:
    args = ["evaluate", str(setup["ckpt"]), "--suite", "quick", "--n-examples", "24", "--eps", EPS,
            "--batch-size", "2", "--seed", "1", "--data-root", str(setup["data"]), "-q"]
    ref = tmp_path / "ref.json"
    with single_thread():
        assert cli_run(args + ["--out", str(ref)]) == 0

    out = tmp_path / "killed.json"
    state = StateFolder.for_output(out)
    proc = subprocess.Popen([sys.executable, "-m", "robustmoe_bench", *args, "--out", str(out)], cwd=REPO,
                            env=sub_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            if state.is_dir() and len(list(state.glob("batch-*.json"))) >= 3:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # mid-run: no chance to clean up
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = len(list(state.glob("batch-*.json")))
    assert 3 <= finished < 12 and not out.exists()  # no partial results file
    with single_thread():
        assert cli_run(args + ["--out", str(out), "--resume"]) == 0
    assert deterministic(out) == deterministic(ref)


def test_resume_after_crash_in_process_and_refuses_other_settings(setup: dict[str, Path], tmp_path: Path) -> None:
    kw = dict(suite="quick", n_examples=24, eps=EPS, batch_size=4, seed=2, data_root=setup["data"], progress=False)
    out = tmp_path / "r.json"

    class Crash(Exception):
        pass

    def crash_after_two(i: int) -> None:
        if i == 2:
            raise Crash

    with single_thread():
        ref = evaluate(setup["ckpt"], **kw)
        with pytest.raises(Crash):
            evaluate(setup["ckpt"], out=out, on_batch=crash_after_two, **kw)
        assert not out.exists() and len(list(StateFolder.for_output(out).glob("batch-*.json"))) == 3
        with pytest.raises(ConfigError, match="different settings \\(eps"):
            evaluate(setup["ckpt"], out=out, resume=True, **{**kw, "eps": "0.02"})
        seen: list[int] = []
        res = evaluate(setup["ckpt"], out=out, resume=True, on_batch=seen.append, **kw)
    assert seen == [3, 4, 5]  # only the missing batches were computed
    assert res.deterministic_dict() == ref.deterministic_dict() == deterministic(out)


def test_second_writer_to_the_same_output_is_refused(setup: dict[str, Path], tmp_path: Path) -> None:
    from robustmoe_bench.evaluation.state import output_lock

    kw = dict(suite="quick", n_examples=8, eps=EPS, batch_size=4, seed=2, data_root=setup["data"], progress=False)
    out = tmp_path / "r.json"
    with single_thread():
        with output_lock(out) as lock:  # another evaluation is writing out
            assert lock.exists()
            with pytest.raises(ConfigError, match="another evaluation is writing .*r.json"):
                evaluate(setup["ckpt"], out=out, **kw)
            with pytest.raises(ConfigError, match="another evaluation"):
                evaluate(setup["ckpt"], out=out, resume=True, **kw)
            assert not out.exists() and not StateFolder.for_output(out).exists()  # nothing touched
        assert not lock.exists()
        res = evaluate(setup["ckpt"], out=out, **kw)
    assert out.exists() and not Path(str(out) + ".lock").exists() and res.n_examples == 8
    with single_thread():  # an output in a folder that does not exist yet (as the main job's results/)
        evaluate(setup["ckpt"], out=tmp_path / "new" / "r.json", **kw)
    assert (tmp_path / "new" / "r.json").exists()


# ------------------------------------------------------------------ torchrun sharding

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_two_processes_equal_one_process(setup: dict[str, Path], tmp_path: Path) -> None:
    args = ["evaluate", str(setup["ckpt"]), "--suite", "quick", "--n-examples", "14", "--eps", EPS,
            "--batch-size", "4", "--seed", "4", "--data-root", str(setup["data"]), "-q"]
    one = tmp_path / "one.json"
    with single_thread():
        assert cli_run(args + ["--out", str(one)]) == 0
    two = tmp_path / "two.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "-m", "robustmoe_bench", *args, "--out", str(two)]
    p = subprocess.run(cmd, cwd=REPO, env=sub_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    assert deterministic(two) == deterministic(one)


# ------------------------------------------------------------------ bad input: one line, non-zero exit, no file

@pytest.fixture(scope="module")
def mismatched_ckpt(setup: dict[str, Path]) -> Path:
    path = setup["root"] / "seven-classes.safetensors"
    save_checkpoint(path, create_model("resnet-tiny", kind="moe", dataset="fashion-mnist", num_classes=7))
    return path


@pytest.mark.parametrize("case, message", [
    ("pixel-eps", "pixel units"),
    ("too-many", "only 60"),
    ("classes", "7 classes but fashion-mnist has 10"),
    ("suite", "unknown suite 'fastest'"),
    ("missing", "checkpoint not found"),
    ("norm", "norm must be one of Linf, L2"),
    ("resume-no-out", "--resume needs --out"),
    ("zero-examples", "positive integer"),
])
def test_bad_input_gives_one_line_and_no_results_file(setup: dict[str, Path], mismatched_ckpt: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str], case: str, message: str) -> None:
    out = tmp_path / "never.json"
    base = ["evaluate", str(setup["ckpt"]), "--suite", "quick", "--data-root", str(setup["data"]), "-q"]
    argv = {
        "pixel-eps": base + ["--eps", "8"],
        "too-many": base + ["--n-examples", "61"],
        "classes": ["evaluate", str(mismatched_ckpt), "--suite", "quick", "--data-root", str(setup["data"])],
        "suite": base[:2] + ["--suite", "fastest", "--data-root", str(setup["data"])],
        "missing": ["evaluate", str(tmp_path / "nope.safetensors"), "--data-root", str(setup["data"])],
        "norm": base + ["--norm", "L3"],
        "resume-no-out": base + ["--resume"],
        "zero-examples": base + ["--n-examples", "0"],
    }[case]
    if case != "resume-no-out":
        argv = argv + ["--out", str(out)]
    code = cli_run(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not StateFolder.for_output(out).exists()


# ------------------------------------------------------------------ gradient-masking checks

class Quantised(nn.Module):
    """Rounds inputs to 4 grey levels before the model: piecewise constant, so input gradients are 0."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 3) / 3)


class Noisy(nn.Module):
    """Adds fresh noise to the logits on every call: not deterministic."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out + 1e-3 * torch.randn_like(out)


def _pgd_factory(name: str, eps: float, norm: str = "Linf", **kw: Any) -> Any:
    from robustmoe_bench.attacks import create_attack

    return create_attack(name, eps, norm, **kw)


def test_checks_pass_on_a_plain_model_and_flag_masking(setup: dict[str, Path]) -> None:
    from robustmoe_bench.checkpoint import load_checkpoint

    model = load_checkpoint(setup["ckpt"]).model
    x, y = as_tensors(load_dataset("fashion-mnist", "test", root=setup["data"]), list(range(30)))
    with single_thread():
        ok = eps_increase(model, x, y, eps=0.03, norm="Linf", seed=0, factory=_pgd_factory)
        assert ok["passed"] and ok["values"]["accuracy"]["x16"] < 5.0
        assert ok["values"]["eps"]["x16"] == pytest.approx(0.48)
        zg = zero_gradients(model, x, y)
        assert zg["passed"] and zg["values"]["examples_all_zero"] == 0.0
        det = deterministic_routing(model, x)
        assert det["passed"] and det["values"]["identical_routing"]

        masked = Quantised(model)
        zq = zero_gradients(masked, x, y)
        assert not zq["passed"] and zq["values"]["examples_all_zero"] == 100.0 and zq["values"]["entries_zero"] == 100.0
        # a zero gradient leaves PGD with only its random start: accuracy does not fall to ~0 as eps grows
        eq = eps_increase(masked, x, y, eps=0.03, norm="Linf", seed=0, factory=_pgd_factory)
        assert eq["values"]["accuracy"]["x1"] > 0
        nd = deterministic_routing(Noisy(model), x)
        assert not nd["passed"] and not nd["values"]["identical_logits"]


# ------------------------------------------------------------------ AutoAttack through the suite vs pyautoattack directly

def direct_pyautoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int,
                        small: bool) -> torch.Tensor:
    """``[n]`` bool robust under pyautoattack's AutoAttack run directly (standard version, or the same four
    attacks with fewer iterations/queries/targets when ``small``)."""
    import logging

    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    if small:
        aa = AutoAttack(model, attacks=["apgd-ce", "apgd-t", "fab-t", "square"], version="custom", eps=eps,
                        norm="Linf", seed=seed, device="cpu")
        log = logging.getLogger("auto-attack")
        aa.apgd = APGDAttack(model, n_restarts=1, n_iter=10, verbose=False, eps=eps, norm="Linf", eot_iter=1,
                             rho=0.75, seed=seed, device="cpu", logger=log)
        aa.apgd_targeted = APGDAttack_targeted(model, n_restarts=1, n_iter=10, verbose=False, eps=eps, norm="Linf",
                                               eot_iter=1, rho=0.75, seed=seed, device="cpu", logger=log)
        aa.apgd_targeted.n_target_classes = 3
        aa.fab.n_restarts, aa.fab.n_iter, aa.fab.n_target_classes = 1, 10, 3
        aa.square.n_queries = 100
    else:
        aa = AutoAttack(model, version="standard", eps=eps, norm="Linf", seed=seed, device="cpu")
    aa.verbose = False
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=250)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def test_suite_autoattack_number_equals_direct_pyautoattack(setup: dict[str, Path]) -> None:
    """Fewer iterations than the standard version (the CPU budget of a default test run); the same
    equality with the standard version is the slow test below."""
    from robustmoe_bench.checkpoint import load_checkpoint
    from robustmoe_bench.evaluation import AttackSpec, Suite

    small = Suite("aa-small", "AutoAttack's four attacks with fewer iterations", (AttackSpec(
        "autoattack", "autoattack", (("n_iter", 10), ("n_queries", 100), ("n_target_classes", 3)), whitebox=False),))
    with single_thread():
        res = evaluate(setup["ckpt"], suite=small, n_examples=20, eps=EPS, batch_size=20, seed=6,
                       data_root=setup["data"], progress=False)
        model = load_checkpoint(setup["ckpt"]).model
        test = load_dataset("fashion-mnist", "test", root=setup["data"])
        x, y = as_tensors(test, subset_indices(len(test), 20, 6))
        robust = direct_pyautoattack(model, x, y, 0.03, batch_attack_seed(6, 0, 0), small=True)
    assert res.robust_acc["autoattack"] == pytest.approx(100 * int(robust.sum()) / 20, abs=1e-4)
    assert 0 < int(robust.sum()) < round(res.clean_acc / 5)  # it broke some clean-correct examples, not all


def test_autoattack_parts_in_a_suite_report_autoattack_and_feed_the_square_check(setup: dict[str, Path]) -> None:
    """The full suite runs AutoAttack as its four attacks: their cascade accuracy is reported under
    ``autoattack`` too, and the Square check uses the suite's own Square (no second 5000-query run)."""
    from robustmoe_bench.evaluation import AttackSpec, Suite
    from robustmoe_bench.leaderboard.entry import attacks_before_autoattack

    few = (("n_iter", 5), ("n_target_classes", 2))
    parts = tuple(AttackSpec(n, n, few, group="autoattack") for n in ("apgd-ce", "apgd-t", "fab-t"))
    suite = Suite("aa-parts", "PGD-5 then AutoAttack's parts with few iterations", (
        AttackSpec("pgd-5", "pgd", (("steps", 5),)), *parts,
        AttackSpec("square", "square", (("n_queries", 300),), whitebox=False, group="autoattack")), checks=True)
    with single_thread():
        res = evaluate(setup["ckpt"], suite=suite, n_examples=20, eps=EPS, batch_size=20, seed=6,
                       data_root=setup["data"], progress=False)
    acc = res.robust_acc
    assert acc["autoattack"] == acc["square"] <= acc["fab-t"] <= acc["apgd-t"] <= acc["apgd-ce"] <= acc["pgd-5"]
    assert acc["worst_case"] == acc["autoattack"] and acc["pgd-5"] < res.clean_acc
    square = next(a for a in res.attacks if a.name == "square")
    check = res.flags["square_vs_whitebox"]
    assert "the suite's own run" in check["evidence"]
    assert check["values"]["broken_by_square_only"] == square.n_broken
    assert check["values"]["whitebox"] == acc["fab-t"]  # the examples Square ran on
    from robustmoe_bench.evaluation.checks import SQUARE_P0, count_rule

    survivors = round(acc["fab-t"] * 20 / 100)
    assert check["values"]["survivors"] == survivors
    assert check["passed"] == (not count_rule(square.n_broken, survivors, SQUARE_P0)["flagged"])
    assert attacks_before_autoattack(res.to_dict()) == ("pgd-5",)


@pytest.mark.slow
def test_standard_and_autoattack_suites_equal_direct_pyautoattack_standard(setup: dict[str, Path]) -> None:
    from robustmoe_bench.checkpoint import load_checkpoint
    from robustmoe_bench.evaluation.state import str_to_mask

    model = load_checkpoint(setup["ckpt"]).model
    test = load_dataset("fashion-mnist", "test", root=setup["data"])
    x, y = as_tensors(test, subset_indices(len(test), 20, 7))
    with single_thread():
        # the autoattack suite: AutoAttack on the clean-correct examples == a direct run on all of them
        res = evaluate(model, suite="autoattack", n_examples=20, eps=EPS, batch_size=20, seed=7,
                       data_root=setup["data"], progress=False)
        direct = direct_pyautoattack(model, x, y, 0.03, batch_attack_seed(7, 0, 0), small=False)
        assert res.robust_acc["autoattack"] == pytest.approx(100 * int(direct.sum()) / 20, abs=1e-4)
        # the standard suite: AutoAttack alone on every clean-correct example (scope "alone") == a direct
        # run on those examples, whatever PGD-50 broke first
        rec = run_cascade(model, x, y, plan(get_suite("standard"), True, 2), eps=0.03, norm="Linf", seed=7,
                          batch_index=0)
        reached = str_to_mask(rec.clean)
        direct2 = direct_pyautoattack(model, x[reached], y[reached], 0.03, batch_attack_seed(7, 0, 1), small=False)
    assert str_to_mask(rec.attacks["autoattack"].fooled)[reached].tolist() == (~direct2).tolist()
    assert rec.attacks["autoattack"].n_attacked == int(reached.sum())


# ------------------------------------------------------------------ masked gradients: the full suite sees through them

def test_full_suite_breaks_masked_gradient_moe_that_pgd50_misses() -> None:
    from helpers_models import make_masked_gradient_moe

    from robustmoe_bench.evaluation.checks import run_checks
    from robustmoe_bench.evaluation.state import str_to_mask

    model, x, y = make_masked_gradient_moe(eps=0.1, n=8)
    attacks = plan(get_suite("full"), True, 2)
    with single_thread():
        rec = run_cascade(model, x, y, attacks, eps=0.1, norm="Linf", seed=0, batch_index=0)
        robust = str_to_mask(rec.clean)
        after: dict[str, int] = {}
        for a in attacks:
            robust &= ~str_to_mask(rec.attacks[a.name].broken)
            after[a.name] = int(robust.sum())
        assert rec.clean == "11111111" and after["pgd-50"] == 8  # plain PGD-50: "100% robust"
        assert after["square"] <= after["pgd-50"] and after["square"] == 0  # the worst case sees through it
        adaptive = sum(str_to_mask(rec.attacks[k].broken).sum().item() for k in ("soft-pgd", "joint", "pathway-forced"))
        assert adaptive == 8  # examples PGD-50 missed, found by the adaptive attacks
        assert rec.attacks["router-untargeted"].routing_changed == 8
        wb = str_to_mask(rec.clean)
        for a in attacks:
            if a.whitebox:
                wb &= ~str_to_mask(rec.attacks[a.name].broken)
        assert int(wb.sum()) == 0  # the adaptive white-box attacks leave nothing for Square
        # The checks on 16 inputs of the same construction: their binomial rules need at least 5 flagged
        # examples (evaluation/checks.py), and at 16x the radius it keeps about half its inputs "robust".
        model16, x16, y16 = make_masked_gradient_moe(eps=0.1, n=16)
        flags = run_checks(model16, x16, y16, torch.zeros(16, dtype=torch.bool), eps=0.1, norm="Linf", seed=0)
    # the masking is flagged, not hidden: exactly-zero gradients, and accuracy that does not fall with eps
    assert not flags["zero_gradients"]["passed"] and flags["zero_gradients"]["values"]["examples_all_zero"] == 100.0
    assert not flags["eps_increase"]["passed"] and flags["eps_increase"]["values"]["accuracy"]["x1"] == 100.0
    assert flags["eps_increase"]["values"]["correct_at_max"] >= 5
    assert flags["deterministic_routing"]["passed"]
