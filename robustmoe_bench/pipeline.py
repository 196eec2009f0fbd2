"""The main job, end to end on one data set (default: Fashion-MNIST at the ``fmnist-mini`` preset).

1. train AT(Dense), AT(S-Dense), AT(Sparse), AT(MoE) and AdvMoE (or take them from the model zoo);
2. evaluate each with a suite (default ``full``) on a seeded test subset;
3. dissect the MoE models (model attack and router attack) and compare their pathways with the Sparse
   model's mask (IoU, expert utilisation);
4. publish leaderboard entries and build the leaderboard pages;
5. print (and write) the comparison table.

Every step is resumable: a finished training run, evaluation, dissection or entry is reused when the
job is run again on the same output folder, and an interrupted evaluation resumes from its state file.
"""
from __future__ import annotations

import json
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
    n_examples: int = 100
    dissect_examples: int = 200
    seed: int = 0
    data_root: str | None = None
    leaderboard_root: str | None = None  # None: <out>/leaderboards
    batch_size: int = 200

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS + ("std",)]
        if unknown:
            raise ConfigError(f"unknown method(s) for the main job: {', '.join(unknown)}; known: {', '.join(METHODS)}")
        if self.n_examples < 1 or self.dissect_examples < 1:
            raise ConfigError("example counts must be positive")


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


def _timed(seconds: dict[str, float], key: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    seconds[key] = round(seconds.get(key, 0.0) + time.perf_counter() - t0, 1)
    return out


def _train_or_fetch(cfg: PipelineConfig, method: str, out: Path, console: Console,
                    checkpoints: dict[str, str]) -> Path:
    """The checkpoint of ``method``: from the zoo (checksum verified), a finished run, or a new run."""
    if cfg.from_zoo:
        from .zoo import get_zoo_model, verify, weights_path

        m = get_zoo_model(ZOO_PREFIX + method)
        path = weights_path(m)
        verify(m, path)
        console.print(f"[bold]{method}[/]: zoo model {m.name} (sha256 verified)")
        return path
    from .training import TrainConfig, train

    run_dir = out / "models" / method
    ckpt = run_dir / "ckpt.pt"
    if ckpt.exists() and (run_dir / "config.json").exists():
        console.print(f"[bold]{method}[/]: reusing finished run {run_dir}")
        return ckpt
    overrides: dict[str, Any] = {"method": method, "seed": cfg.seed, "data_root": cfg.data_root}
    if method == "at-sparse" and "at-dense" in checkpoints:
        overrides["from_dense"] = checkpoints["at-dense"]  # Hydra prunes a pretrained Dense model
    tcfg = TrainConfig.from_preset(cfg.preset, **overrides)
    resume = (run_dir / "config.json").exists()
    console.rule(f"train {method}")
    result = train(tcfg, run_dir, progress=True, resume=resume)
    return result.ckpt


def run_pipeline(cfg: PipelineConfig, console: Console | None = None) -> PipelineResult:
    """Run the main job into ``cfg.out``; see the module docstring."""
    from .analysis.dissect import dissect, plot_dissection
    from .analysis.iou import iou_analysis, plot_iou
    from .data import as_tensors, get_dataset_info, load_dataset, subset_indices
    from .evaluation import evaluate
    from .leaderboard import build, publish_results

    console = console or Console()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "pipeline.json", json.dumps(asdict(cfg), indent=2, default=str).encode())
    board_root = Path(cfg.leaderboard_root) if cfg.leaderboard_root else out / "leaderboards"
    res = PipelineResult()
    sec = res.seconds

    # 1. models
    for method in cfg.methods:
        ckpt = _timed(sec, f"train:{method}", lambda: _train_or_fetch(cfg, method, out, console, res.checkpoints))
        res.checkpoints[method] = str(ckpt)

    # 2. evaluation (resumable: an interrupted evaluation continues from its state file)
    for method, ckpt in res.checkpoints.items():
        path = out / "results" / f"{method}.json"
        res.results[method] = str(path)
        if path.exists():
            console.print(f"[bold]{method}[/]: reusing {path}")
            continue
        console.rule(f"evaluate {method} ({cfg.suite} suite, {cfg.n_examples} test examples)")
        state = Path(str(path) + ".state")
        _timed(sec, f"evaluate:{method}", lambda: evaluate(
            ckpt, suite=cfg.suite, n_examples=cfg.n_examples, seed=cfg.seed, data_root=cfg.data_root,
            out=path, resume=state.exists(), batch_size=cfg.batch_size, progress=True))

    # 3. dissection and pathway IoU of the MoE models
    moe = {m: p for m, p in res.checkpoints.items() if load_checkpoint(p).spec.is_moe}
    if moe:
        first = load_checkpoint(next(iter(moe.values()))).spec
        test = load_dataset(first.dataset, "test", root=cfg.data_root)
        idx = subset_indices(len(test), min(cfg.dissect_examples, len(test)), cfg.seed)
        x, y = as_tensors(test, idx)
        sparse_ckpt = res.checkpoints.get("at-sparse")
        for method, ckpt in moe.items():
            ddir = out / "dissect" / method
            if not (ddir / "dissect.json").exists():
                console.rule(f"dissect {method} ({len(y)} test examples, model and router attacks)")
                model = load_checkpoint(ckpt).model
                d = _timed(sec, f"dissect:{method}", lambda: dissect(model, x, y, routers=True, seed=cfg.seed))
                d.save(ddir / "dissect.json")
                plot_dissection(d, ddir / "dissect.png", title=f"{method}: routers vs. pathways")
            res.dissections[method] = str(ddir / "dissect.json")
            if sparse_ckpt is not None:
                idir = out / "iou" / method
                if not (idir / "iou.json").exists():
                    model, mask = load_checkpoint(ckpt).model, load_checkpoint(sparse_ckpt).model
                    try:
                        r = _timed(sec, f"iou:{method}", lambda: iou_analysis(model, mask, x, y, seed=cfg.seed))
                    except ConfigError as e:  # e.g. N*r != 1: no layer-by-layer match with the mask
                        console.print(f"[yellow]iou {method}: skipped ({e})[/]")
                        continue
                    r.save(idir / "iou.json")
                    plot_iou(r, idir / "iou.png")
                res.iou[method] = str(idir / "iou.json")

    # 4. leaderboard
    for method, path in res.results.items():
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
    pages, _ = build(board_root)
    res.leaderboard_pages = [str(p) for p in pages]

    # 5. comparison table (the paper's Table 1 layout)
    from .analysis.compare import compare_results

    table = compare_results(list(res.results.values()))
    md = out / "comparison.md"
    atomic_write_bytes(md, table.to_markdown().encode())
    res.comparison = str(md)
    console.rule("comparison")
    console.print(table.to_rich())
    atomic_write_bytes(out / "pipeline_result.json", json.dumps(asdict(res), indent=2).encode())
    return res


def describe_info(dataset: str) -> str:
    from .data import get_dataset_info

    info = get_dataset_info(dataset)
    return f"{dataset}: {info.num_classes} classes, eps {info.eps_str}"
