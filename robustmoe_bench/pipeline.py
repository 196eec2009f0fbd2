"""The main job, end to end on one data set (default: Fashion-MNIST at the ``fmnist-mini`` preset).

1. train AT(Dense), AT(S-Dense), AT(Sparse), AT(MoE) and AdvMoE (or take them from the model zoo);
2. evaluate each with a suite (default ``full``) on a seeded test subset;
3. dissect the MoE models (model attack and router attack) and compare their pathways with the Sparse
   model's mask (IoU, expert utilisation);
4. publish leaderboard entries and build the leaderboard pages;
5. print (and write) the comparison table.

Steps 1-3 are jobs of a dependency graph (train -> evaluate, train at-dense -> train at-sparse,
train -> dissect + IoU), run on ``workers`` processes side by side (default 2, one torch thread each,
longest job first) or in this process (``workers=1``, with live progress bars). Every step is
resumable: a finished training run, evaluation, dissection or entry is reused when the job is run again
on the same output folder, and an interrupted evaluation resumes from its state file.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from .checkpoint import atomic_write_bytes, load_checkpoint
from .errors import ConfigError

#: The five robust methods of the paper's Table 1, in training order (at-sparse reuses at-dense's
#: weights as its pretrained Dense model, so at-dense comes first).
METHODS = ("at-dense", "at-sdense", "at-sparse", "at-moe", "advmoe")
ZOO_PREFIX = "fmnist-"


@dataclass
class PipelineConfig:
    """Options of the main job (see :func:`run_pipeline`)."""

    out: str = "runs/fmnist-demo"
    preset: str = "fmnist-mini"
    methods: tuple[str, ...] = METHODS
    from_zoo: bool = False
    suite: str = "full"
    n_examples: int = 50
    dissect_examples: int = 200
    seed: int = 0  # training seed (and, unless eval_seed is given, the evaluation subset's seed)
    eval_seed: int | None = None  # seed of the evaluated/dissected test subset and of the attacks
    dissect: bool = True  # dissect the MoE models and compare their pathways with the Sparse mask
    publish: bool = True  # publish leaderboard entries and build the pages
    data_root: str | None = None
    leaderboard_root: str | None = None  # None: <out>/leaderboards
    batch_size: int = 200
    workers: int = 0  # worker processes for the jobs; 0 = 2 when torch has >= 2 CPU threads, else 1

    def resolved_workers(self) -> int:
        if self.workers > 0:
            return self.workers
        import torch

        return 2 if torch.get_num_threads() >= 2 else 1

    @property
    def subset_seed(self) -> int:
        return self.seed if self.eval_seed is None else self.eval_seed

    def __post_init__(self) -> None:
        known = METHODS + ("advmoe-public", "std")
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ConfigError(f"unknown method(s) for the main job: {', '.join(unknown)}; known: {', '.join(known)}")
        if self.n_examples < 1 or self.dissect_examples < 1:
            raise ConfigError("example counts must be positive")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0 (0 = automatic), got {self.workers}")


@dataclass
class PipelineResult:
    """Paths of what the job produced."""

    checkpoints: dict[str, str] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)
    dissections: dict[str, str] = field(default_factory=dict)
    iou: dict[str, str] = field(default_factory=dict)
    entries: dict[str, str] = field(default_factory=dict)
    leaderboard_pages: list[str] = field(default_factory=list)
    comparison: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- jobs
# Module-level functions (picklable): each runs in the main process (workers=1) or in a worker process.
# They reuse finished outputs, so re-running the job on the same folder resumes it.

def _say(line: str) -> None:
    """One plain line on stdout (workers print lines, never live bars: several processes share the terminal)."""
    print(line, flush=True)


def _job_train(cfg: PipelineConfig, method: str, from_dense: str | None, progress: bool) -> dict[str, Any]:
    from .training import TrainConfig, train

    run_dir = Path(cfg.out) / "models" / method
    ckpt = run_dir / "ckpt.pt"
    if ckpt.exists() and (run_dir / "config.json").exists():
        _say(f"{method}: reusing finished run {run_dir}")
        return {"path": str(ckpt), "reused": True}
    overrides: dict[str, Any] = {"method": method, "seed": cfg.seed, "data_root": cfg.data_root}
    if from_dense is not None:
        overrides["from_dense"] = from_dense  # Hydra prunes a pretrained Dense model
    tcfg = TrainConfig.from_preset(cfg.preset, **overrides)
    result = train(tcfg, run_dir, progress=progress, resume=(run_dir / "config.json").exists())
    _say(f"{method}: trained, validation clean {result.final_clean_acc:.1f}% PGD-10 {result.final_pgd10_acc:.1f}%")
    return {"path": str(result.ckpt), "reused": False}


def _job_evaluate(cfg: PipelineConfig, method: str, ckpt: str, progress: bool) -> dict[str, Any]:
    from .evaluation import evaluate

    path = Path(cfg.out) / "results" / f"{method}.json"
    if path.exists():
        _say(f"{method}: reusing {path}")
        return {"path": str(path), "reused": True}
    state = Path(str(path) + ".state")  # an interrupted evaluation continues from its state file
    r = evaluate(ckpt, suite=cfg.suite, n_examples=cfg.n_examples, seed=cfg.subset_seed, data_root=cfg.data_root,
                 out=path, resume=state.exists(), batch_size=cfg.batch_size, progress=progress)
    _say(f"{method}: evaluated ({cfg.suite} suite, {r.n_examples} examples): clean {r.clean_acc:.1f}%, "
         f"worst case {r.robust_acc['worst_case']:.1f}%")
    return {"path": str(path), "reused": False}


def _job_dissect(cfg: PipelineConfig, method: str, ckpt: str, sparse_ckpt: str | None) -> dict[str, Any]:
    """Dissection (model and router attacks) and, with a Sparse model, the pathway IoU of one MoE model."""
    from .analysis.dissect import dissect, plot_dissection
    from .analysis.iou import iou_analysis, plot_iou
    from .data import as_tensors, load_dataset, subset_indices

    out = Path(cfg.out)
    model = load_checkpoint(ckpt).model
    test = load_dataset(model.spec.dataset, "test", root=cfg.data_root)
    x, y = as_tensors(test, subset_indices(len(test), min(cfg.dissect_examples, len(test)), cfg.subset_seed))
    res: dict[str, Any] = {"dissect": str(out / "dissect" / method / "dissect.json"), "iou": None}
    ddir = out / "dissect" / method
    if not (ddir / "dissect.json").exists():
        d = dissect(model, x, y, routers=True, seed=cfg.subset_seed)
        d.save(ddir / "dissect.json")
        plot_dissection(d, ddir / "dissect.png", title=f"{method}: routers vs. pathways")
        _say(f"{method}: dissected ({len(y)} examples)")
    if sparse_ckpt is not None:
        idir = out / "iou" / method
        if not (idir / "iou.json").exists():
            try:
                r = iou_analysis(model, load_checkpoint(sparse_ckpt).model, x, y, seed=cfg.subset_seed)
            except ConfigError as e:  # e.g. N*r != 1: no layer-by-layer match with the mask
                _say(f"{method}: IoU skipped ({e})")
                return res
            r.save(idir / "iou.json")
            plot_iou(r, idir / "iou.png")
        res["iou"] = str(idir / "iou.json")
    return res


@dataclass
class _Job:
    key: str                        # "train:at-dense", "evaluate:advmoe", ...
    fn: Callable[..., Any]
    args: tuple
    deps: tuple[str, ...] = ()
    cost: float = 1.0               # expected relative cost (see _priorities)


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel send this worker SIGTERM when the main job's process dies (killed, crashed),
    so a killed job never leaves its jobs running and writing into its output folder."""
    import os
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the main job died before the request took effect
        os._exit(1)


def _worker_init(threads: int, parent: int) -> None:
    import os
    import sys

    import torch

    _die_with_parent(parent)
    os.environ["TERM"] = "dumb"  # rich: no live displays in workers, plain lines only
    for stream in (sys.stdout, sys.stderr):  # lines appear as they happen, also when piped to a file
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    torch.set_num_threads(threads)


def _priorities(jobs: list[_Job]) -> dict[str, float]:
    """Each job's critical path: its cost plus the longest chain of jobs waiting on it. The ready job with
    the longest critical path starts first, so a cheap job that unlocks an expensive one (a short training
    before its hour-long evaluation) is not left for the end, where it would leave the other workers idle."""
    children: dict[str, list[_Job]] = {j.key: [] for j in jobs}
    for j in jobs:
        for d in j.deps:
            if d in children:
                children[d].append(j)
    rank: dict[str, float] = {}

    def visit(j: _Job, depth: int = 0) -> float:
        if j.key not in rank:
            if depth > len(jobs):
                raise RuntimeError(f"cyclic job dependencies at {j.key}")
            rank[j.key] = j.cost + max((visit(c, depth + 1) for c in children[j.key]), default=0.0)
        return rank[j.key]

    for j in jobs:
        visit(j)
    return rank


def _run_jobs(jobs: list[_Job], workers: int, console: Console, seconds: dict[str, float]) -> dict[str, Any]:
    """Run a dependency graph of jobs, ``workers`` at a time (1 = in this process, in order)."""
    results: dict[str, Any] = {}
    if workers <= 1:
        for job in jobs:
            console.rule(job.key.replace(":", " "))
            t0 = time.perf_counter()
            results[job.key] = job.fn(*job.args)
            seconds[job.key] = round(time.perf_counter() - t0, 1)
        return results

    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    threads = max(1, torch.get_num_threads() // workers)
    console.print(f"[bold]{len(jobs)} jobs[/] on {workers} worker processes, {threads} torch thread(s) each")
    pending = list(jobs)
    rank = _priorities(jobs)
    running: dict[Any, tuple[_Job, float]] = {}
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                               initargs=(threads, os.getpid()))
    finished = False
    try:
        while pending or running:
            ready = sorted((j for j in pending if all(d in results for d in j.deps)), key=lambda j: -rank[j.key])
            for job in ready[: workers - len(running)]:
                pending.remove(job)
                console.print(f"[cyan]start[/] {job.key}")
                running[pool.submit(job.fn, *job.args)] = (job, time.perf_counter())
            if not running:
                raise RuntimeError(f"unsatisfiable job dependencies: {[j.key for j in pending]}")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                job, t0 = running.pop(fut)
                results[job.key] = fut.result()  # re-raises a worker's error here
                seconds[job.key] = round(time.perf_counter() - t0, 1)
                left = len(pending) + len(running)
                console.print(f"[green]done[/]  {job.key} in {seconds[job.key]:.0f} s ({left} job(s) left)")
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            # a job failed or Ctrl-C: stop the other jobs now instead of waiting for them (an evaluation
            # can run for an hour); their state files let a re-run resume. (A killed main process takes
            # its workers with it through _die_with_parent.)
            procs = list((getattr(pool, "_processes", None) or {}).values())  # CPython's worker handles
            pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                p.terminate()
            deadline = time.monotonic() + 30
            for p in procs:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
                if p.exitcode is None and p.is_alive():  # still running after SIGTERM (a loaded machine)
                    p.kill()
                    p.join(timeout=10)
            # the executor's manager thread reaps the same workers (its waitpid and ours race: whichever
            # loses sees no child and leaves the exit code unset for a moment): wait for it to finish, so
            # that no worker handle is left behind when the error reaches the caller. It ends once the
            # workers are dead; the bound is for safety on a loaded machine (CI failed once at 10 s).
            manager = getattr(pool, "_executor_manager_thread", None)
            if manager is not None:
                manager.join(timeout=60)
    return results


# Relative costs of the jobs (measured on the fmnist-mini preset): the scheduler starts the ready job with
# the longest critical path first (_priorities).
_TRAIN_COST = {"advmoe": 8.0, "advmoe-public": 8.0, "at-moe": 4.0, "at-dense": 2.0, "at-sparse": 2.0, "at-sdense": 1.0, "std": 1.0}


def run_pipeline(cfg: PipelineConfig, console: Console | None = None) -> PipelineResult:
    """Run the main job into ``cfg.out``; see the module docstring."""
    return run_pipelines([cfg], console)[0]


def run_pipelines(cfgs: list[PipelineConfig], console: Console | None = None) -> list[PipelineResult]:
    """Run several main jobs (e.g. one per training seed) as one dependency graph on the first config's
    workers, so a job of one run starts as soon as a worker is free instead of after the previous run's
    last job; then finish each run (leaderboard, comparison) as :func:`run_pipeline` does."""
    console = console or Console()
    t_start = time.perf_counter()
    workers = cfgs[0].resolved_workers()
    progress = workers <= 1  # live bars only when one process owns the terminal
    tags = [""] if len(cfgs) == 1 else [f"{Path(c.out).name}/" for c in cfgs]
    if len(set(tags)) != len(tags) or len({str(Path(c.out).resolve()) for c in cfgs}) != len(cfgs):
        raise ConfigError("each run needs its own output folder (with its own name)")
    plans = [_plan(cfg, console, progress) for cfg in cfgs]
    jobs = _merge_jobs(tags, [js for _, js, _ in plans])
    seconds: dict[str, float] = {}
    done = _run_jobs(jobs, workers, console, seconds)
    out = []
    for tag, cfg, (res, js, moe) in zip(tags, cfgs, plans):
        keys = [j.key for j in js]
        res.seconds.update({k: seconds[tag + k] for k in keys if tag + k in seconds})
        out.append(_finish(cfg, res, {k: done[tag + k] for k in keys}, moe, console, t_start, tag.rstrip("/")))
    return out


def _merge_jobs(tags: list[str], job_lists: list[list[_Job]]) -> list[_Job]:
    """One graph of several runs' jobs: keys and dependencies prefixed with the run's tag, so a job only
    waits for jobs of its own run."""
    return [_Job(tag + j.key, j.fn, j.args, tuple(tag + d for d in j.deps), j.cost)
            for tag, js in zip(tags, job_lists) for j in js]


def _plan(cfg: PipelineConfig, console: Console, progress: bool) -> tuple[PipelineResult, list[_Job], list[str]]:
    """Steps 1-3 of the main job as jobs (the zoo's checksums are verified here)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "pipeline.json", json.dumps(asdict(cfg), indent=2, default=str).encode())
    res = PipelineResult()

    # 1. models: the zoo's (checksums verified) or training jobs
    jobs: list[_Job] = []
    if cfg.from_zoo:
        from .zoo import get_zoo_model, verify, weights_path

        for method in cfg.methods:
            m = get_zoo_model(ZOO_PREFIX + method)
            path = weights_path(m)
            verify(m, path)
            console.print(f"[bold]{method}[/]: zoo model {m.name} (sha256 verified)")
            res.checkpoints[method] = str(path)
    else:
        for method in cfg.methods:
            res.checkpoints[method] = str(out / "models" / method / "ckpt.pt")
        for method in cfg.methods:
            from_dense = res.checkpoints["at-dense"] if (method == "at-sparse" and "at-dense" in cfg.methods) else None
            jobs.append(_Job(f"train:{method}", _job_train, (cfg, method, from_dense, progress),
                             ("train:at-dense",) if from_dense else (), _TRAIN_COST.get(method, 1.0)))

    # 2. evaluation of every model, 3. dissection and pathway IoU of the MoE models
    trained = {j.key for j in jobs}
    moe = [m for m in cfg.methods if _is_moe_method(m)] if cfg.dissect else []
    sparse_ckpt = res.checkpoints.get("at-sparse")
    for method in cfg.methods:
        dep = (f"train:{method}",) if f"train:{method}" in trained else ()
        # evaluation progress in a worker: one line per attack (no live bar there)
        jobs.append(_Job(f"evaluate:{method}", _job_evaluate, (cfg, method, res.checkpoints[method], True),
                         dep, 3.0 if method in moe else 2.0))
        res.results[method] = str(out / "results" / f"{method}.json")
    for method in moe:
        deps = tuple(k for k in (f"train:{method}", "train:at-sparse") if k in trained)
        jobs.append(_Job(f"dissect:{method}", _job_dissect, (cfg, method, res.checkpoints[method], sparse_ckpt),
                         deps, 0.5))
    return res, jobs, moe


def _finish(cfg: PipelineConfig, res: PipelineResult, done: dict[str, Any], moe: list[str], console: Console,
            t_start: float, label: str = "") -> PipelineResult:
    """Steps 4-5 of the main job, once its jobs are ``done``."""
    from .leaderboard import build, publish_results

    out = Path(cfg.out)
    board_root = Path(cfg.leaderboard_root) if cfg.leaderboard_root else out / "leaderboards"
    sec = res.seconds
    for method in moe:
        d = done[f"dissect:{method}"]
        res.dissections[method] = d["dissect"]
        if d["iou"]:
            res.iou[method] = d["iou"]

    # 4. leaderboard
    for method, path in (res.results.items() if cfg.publish else ()):
        if "autoattack" not in json.loads(Path(path).read_text())["robust_acc"]:
            console.print(f"[yellow]leaderboard: {method} not published (suite {cfg.suite!r} runs no AutoAttack)[/]")
            continue
        model_id = f"robustmoe-{ZOO_PREFIX}{method}"
        spec = load_checkpoint(res.checkpoints[method]).spec
        entry_path, _ = publish_results(
            path, model_id, board_root, force=True,
            title=f"{method} on {spec.dataset} (robustmoe-bench, {cfg.preset} preset)",
            authors="robustmoe-bench", venue="robustmoe-bench", architecture=spec.describe(),
        )
        res.entries[method] = str(entry_path)
    if res.entries:
        pages, _, _ = build(board_root)
        res.leaderboard_pages = [str(p) for p in pages]

    # 5. comparison table (the paper's Table 1 layout)
    from .analysis.compare import compare_results

    table = compare_results(list(res.results.values()))
    md = out / "comparison.md"
    atomic_write_bytes(md, table.to_markdown().encode())
    res.comparison = str(md)
    console.rule(f"comparison {label}".strip())
    console.print(table.compact().to_rich(console.width))  # headline columns; every attack's column is in comparison.md
    console.print(f"every attack's accuracy: {md}")
    sec["total"] = round(time.perf_counter() - t_start, 1)
    atomic_write_bytes(out / "pipeline_result.json", json.dumps(asdict(res), indent=2).encode())
    return res


def _is_moe_method(method: str) -> bool:
    from .training.config import METHOD_KINDS

    return METHOD_KINDS.get(method, "dense") == "moe"


def describe_info(dataset: str) -> str:
    from .data import get_dataset_info

    info = get_dataset_info(dataset)
    return f"{dataset}: {info.num_classes} classes, eps {info.eps_str}"
