"""The main job end to end on tiny real Fashion-MNIST files: five models, evaluation, dissection, IoU,
leaderboard entries and the comparison table, with the numbers cross-checked between the outputs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from robustmoe_bench.cli import run
from robustmoe_bench.leaderboard import validate_root
from helpers_data import write_fmnist_subset


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """320 training and 96 test images of the real Fashion-MNIST, written as IDX files."""
    return write_fmnist_subset(tmp_path_factory.mktemp("fmnist-pipeline"), 320, 96)


def test_main_job_end_to_end_and_resume(tiny_root, tmp_path, capsys):
    out = tmp_path / "job"
    args = ["pipeline", "--out", str(out), "--preset", "fmnist-tiny", "--suite", "standard", "--n-examples", "32",
            "--dissect-examples", "32", "--data-root", str(tiny_root)]
    assert run(args + ["--workers", "2"]) == 0  # jobs side by side in two worker processes
    methods = ["at-dense", "at-sdense", "at-sparse", "at-moe", "advmoe"]
    res = json.loads((out / "pipeline_result.json").read_text())
    assert sorted(res["checkpoints"]) == sorted(methods)
    # at-sparse pruned the at-dense model instead of pretraining its own
    sparse_cfg = json.loads((out / "models" / "at-sparse" / "config.json").read_text())
    assert sparse_cfg["from_dense"] == res["checkpoints"]["at-dense"]
    results = {m: json.loads((out / "results" / f"{m}.json").read_text()) for m in methods}
    for m, r in results.items():
        assert r["n_examples"] == 32 and r["suite"] == "standard" and r["training"]["method"] == m
        assert r["robust_acc"]["worst_case"] <= r["robust_acc"]["pgd-50"] <= r["clean_acc"]
    # MoE models are dissected (categories sum to N, the model's robustness is the evaluated worst case
    # under the same attack family) and compared with the Sparse mask
    for m in ("at-moe", "advmoe"):
        d = json.loads((out / "dissect" / m / "dissect.json").read_text())
        assert sum(d["attack"]["counts"].values()) == 32 and d["attack"]["n"] == 32
        assert d["router_attack"] is not None  # --routers: the router-targeted dissection too
        assert (out / "dissect" / m / "dissect.png").stat().st_size > 1000
        iou = json.loads((out / "iou" / m / "iou.json").read_text())
        assert len(iou["clean"]) == 32 and all(0.0 <= v <= 1.0 for v in iou["clean"] + iou["adversarial"])
    assert not (out / "dissect" / "at-dense").exists()
    # leaderboard entries carry the evaluated numbers, validate, and the pages are built
    board = out / "leaderboards"
    n_entries, problems = validate_root(board)
    assert problems == [] and n_entries == 5
    for m in methods:
        entry = json.loads((board / "fashion-mnist" / "Linf" / f"robustmoe-fmnist-{m}.json").read_text())
        assert entry["clean_acc"] == f"{results[m]['clean_acc']:.2f}"
        assert entry["eps"] == "0.1" and entry["dataset"] == "fashion-mnist"
    assert (board / "README.md").exists()
    table = (out / "comparison.md").read_text()
    assert all(m in table for m in methods)
    # every job ran, each timed; the dependency order held (at-sparse trained after at-dense finished)
    keys = {f"{k}:{m}" for k in ("train", "evaluate") for m in methods} | {"dissect:at-moe", "dissect:advmoe"}
    assert keys <= set(res["seconds"]) and res["seconds"]["total"] > 0
    dense_done = (out / "models" / "at-dense" / "ckpt.pt").stat().st_mtime_ns
    sparse_cfg_written = (out / "models" / "at-sparse" / "config.json").stat().st_mtime_ns
    assert sparse_cfg_written >= dense_done
    # a second run (one process) reuses everything: no retraining (checkpoint files untouched)
    mtimes = {m: Path(p).stat().st_mtime_ns for m, p in res["checkpoints"].items()}
    capsys.readouterr()
    assert run(args + ["--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert all(f"{m}: reusing" in printed for m in methods)
    assert {m: Path(p).stat().st_mtime_ns for m, p in res["checkpoints"].items()} == mtimes


def test_main_job_from_zoo_verifies_and_uses_the_packaged_models(tmp_path, capsys):
    """--from-zoo: no training; the packaged models (sha256 verified) are evaluated and dissected."""
    from robustmoe_bench.zoo import get_zoo_model, sha256_file, weights_path

    out = tmp_path / "zoo-job"
    args = ["pipeline", "--out", str(out), "--from-zoo", "--methods", "at-sdense,at-moe", "--suite", "quick",
            "--n-examples", "8", "--dissect-examples", "8", "--workers", "1"]
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "fmnist-at-moe (sha256 verified)" in printed
    assert not (out / "models").exists()  # nothing trained
    res = json.loads((out / "pipeline_result.json").read_text())
    for m in ("at-sdense", "at-moe"):
        zm = get_zoo_model(f"fmnist-{m}")
        assert res["checkpoints"][m] == str(weights_path(zm))
        r = json.loads((out / "results" / f"{m}.json").read_text())
        assert r["checkpoint_sha256"] == zm.sha256 == sha256_file(weights_path(zm))
        assert r["n_examples"] == 8 and r["training"]["method"] == m
    assert (out / "dissect" / "at-moe" / "dissect.json").exists() and res["entries"] == {}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has finished


def _wait_for_pids(pid_dir: Path, n: int, timeout: float = 120) -> list[int]:
    import time

    t0 = time.monotonic()
    while len(list(pid_dir.iterdir())) < n:
        assert time.monotonic() - t0 < timeout, "workers did not start their jobs"
        time.sleep(0.2)
    return [int(p.name) for p in pid_dir.iterdir()]


def test_priorities_are_critical_paths():
    """A job's priority is its cost plus the longest chain of jobs waiting on it; a cycle is an error."""
    from helpers_jobs import sleep_job

    from robustmoe_bench.pipeline import _Job, _priorities

    jobs = [_Job("train:a", sleep_job, (), (), 1.0), _Job("evaluate:a", sleep_job, (), ("train:a",), 2.0),
            _Job("dissect:a", sleep_job, (), ("train:a", "evaluate:a"), 0.5), _Job("evaluate:b", sleep_job, (), (), 2.5)]
    assert _priorities(jobs) == {"train:a": 3.5, "evaluate:a": 2.5, "dissect:a": 0.5, "evaluate:b": 2.5}
    with pytest.raises(RuntimeError, match="cyclic"):
        _priorities([_Job("x", sleep_job, (), ("y",)), _Job("y", sleep_job, (), ("x",))])


def test_a_cheap_job_that_unlocks_an_expensive_one_starts_first(tmp_path):
    """Two workers, three ready jobs: the cheap training whose evaluation waits on it starts before a more
    expensive job that unlocks nothing (longest-job-first would leave it, and its evaluation, for the end)."""
    import io

    from helpers_jobs import sleep_job
    from rich.console import Console

    from robustmoe_bench.pipeline import _Job, _run_jobs

    pids = tmp_path / "pids"
    pids.mkdir()
    args = (0.2, str(pids))
    jobs = [_Job("evaluate:x", sleep_job, args, (), 2.5), _Job("evaluate:y", sleep_job, args, (), 2.6),
            _Job("train:a", sleep_job, args, (), 1.0), _Job("evaluate:a", sleep_job, args, ("train:a",), 2.0)]
    buf = io.StringIO()
    _run_jobs(jobs, 2, Console(file=buf, width=200), {})
    starts = [line.split()[1] for line in buf.getvalue().splitlines() if line.startswith("start")]
    assert starts[:2] == ["train:a", "evaluate:y"] and sorted(starts) == sorted(j.key for j in jobs)


def test_a_failing_job_stops_the_other_workers_at_once(tmp_path):
    """One job fails while another would run for minutes: the error comes back promptly and no worker
    is left running (an hour-long evaluation must not outlive the job that started it)."""
    import multiprocessing
    import time

    from helpers_jobs import failing_job, sleep_job
    from rich.console import Console

    from robustmoe_bench.pipeline import _Job, _run_jobs

    pids = tmp_path / "pids"
    pids.mkdir()
    jobs = [_Job("long", sleep_job, (600, str(pids)), cost=2.0), _Job("bad", failing_job, (3.0,))]
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="this job failed"):
        _run_jobs(jobs, 2, Console(quiet=True), {})
    assert time.monotonic() - t0 < 120  # not the 600 s of the other job
    [worker] = [int(p.name) for p in pids.iterdir()]
    assert not _alive(worker) and multiprocessing.active_children() == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_killing_the_main_job_kills_its_workers(tmp_path):
    """SIGKILL on the main job's process (no clean-up code runs): its workers die with it instead of
    running on as orphans and writing into the output folder."""
    import os
    import signal
    import subprocess
    import time

    pids = tmp_path / "pids"
    pids.mkdir()
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from helpers_jobs import sleep_job\n"
        "from rich.console import Console\n"
        "from robustmoe_bench.pipeline import _Job, _run_jobs\n"
        "_run_jobs([_Job(k, sleep_job, (600, sys.argv[2])) for k in 'ab'], 2, Console(quiet=True), {})\n"
    )
    main = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent), str(pids)])
    try:
        workers = _wait_for_pids(pids, 2)
        assert all(_alive(p) for p in workers)
        os.kill(main.pid, signal.SIGKILL)
        main.wait(timeout=30)
        t0 = time.monotonic()
        while any(_alive(p) for p in workers) and time.monotonic() - t0 < 30:
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers), "workers outlived the killed main job"
    finally:
        main.kill()
        for p in (int(q.name) for q in pids.iterdir()):
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_several_runs_form_one_graph(tmp_path):
    """`reproduce`'s seeds as one job graph: every job keeps its dependencies inside its own run (seed 1's
    at-sparse waits for seed 1's at-dense, never for seed 0's jobs), so a free worker can take any seed's
    next job; two runs into one folder are refused."""
    from rich.console import Console

    from robustmoe_bench.errors import ConfigError
    from robustmoe_bench.pipeline import PipelineConfig, _merge_jobs, _plan, run_pipelines

    cfgs = [PipelineConfig(out=str(tmp_path / f"seed-{s}"), seed=s, dissect=False, publish=False) for s in (0, 1)]
    plans = [_plan(c, Console(quiet=True), False)[1] for c in cfgs]
    jobs = {j.key: j for j in _merge_jobs(["seed-0/", "seed-1/"], plans)}
    assert len(jobs) == 2 * len(plans[0]) == 20
    assert jobs["seed-1/train:at-sparse"].deps == ("seed-1/train:at-dense",)
    assert jobs["seed-1/evaluate:advmoe"].deps == ("seed-1/train:advmoe",)
    assert jobs["seed-1/evaluate:advmoe"].args[0].seed == 1 and jobs["seed-0/evaluate:advmoe"].args[0].seed == 0
    for key, job in jobs.items():
        assert all(d.split("/")[0] == key.split("/")[0] and d in jobs for d in job.deps), key
    same = [PipelineConfig(out=str(tmp_path / "a" / "seed-0")), PipelineConfig(out=str(tmp_path / "b" / "seed-0"))]
    with pytest.raises(ConfigError, match="its own output folder"):
        run_pipelines(same, Console(quiet=True))
