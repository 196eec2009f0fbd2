"""Expert-count x model-scale sweep (SPEC §6, the paper's Figs. 7-8): train and evaluate every cell of
the grid N x r, plus one Dense reference, and tabulate / plot worst-case robust accuracy.

Folder layout (``out``)::

    cells/N{N}_r{r}/train/     the training run (ckpt.pt, config.json, metrics.jsonl, ...)
    cells/N{N}_r{r}/eval.json  the evaluation result (docs/DEVELOPING.md format)
    cells/N{N}_r{r}/done.json  written atomically when the cell is finished: its identity and numbers
    cells/dense/...            the Dense reference (method at-dense), same layout
    sweep.json, sweep.md, sweep.png

Resuming: a cell whose ``done.json`` matches the requested settings is skipped; a cell whose training
finished (``trained.json``) is only evaluated; an interrupted training run resumes after its last
finished epoch and an interrupted evaluation after its last finished batch. A ``done.json`` written
under different settings is an error (mixing settings would make the grid meaningless).

Training and evaluation are injected (``train_fn``, ``eval_fn``) so the resume logic can be tested
without training; the defaults call :func:`robustmoe_bench.training.train` and
:func:`robustmoe_bench.evaluation.evaluate`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..checkpoint import atomic_write_bytes
from ..errors import ConfigError
from ..training.config import METHOD_KINDS

SCHEMA_VERSION = 1

#: ``train_fn(config: TrainConfig, out_dir, resume) -> checkpoint path``.
TrainFn = Callable[[Any, Path, bool], Path]
#: ``eval_fn(checkpoint, out_json) -> evaluation result dict`` (the shared evaluation JSON format).
EvalFn = Callable[[Path, Path], dict]


# --------------------------------------------------------------------------- configuration
def parse_experts(text: str) -> list[int]:
    """``"2,4,8"`` -> ``[2, 4, 8]``; every entry an integer >= 2, no duplicates."""
    out = []
    for part in _parts(text, "--experts"):
        try:
            v = int(part)
        except ValueError:
            raise ConfigError(f"--experts: {part!r} is not an integer") from None
        out.append(v)
    return validate_experts(out)


def parse_scales(text: str) -> list[float]:
    """``"0.2,0.5"`` -> ``[0.2, 0.5]``; every entry in (0, 1], no duplicates."""
    out = []
    for part in _parts(text, "--scale"):
        try:
            v = float(part)
        except ValueError:
            raise ConfigError(f"--scale: {part!r} is not a number") from None
        out.append(v)
    return validate_scales(out)


def _parts(text: str, flag: str) -> list[str]:
    parts = [p.strip() for p in str(text).split(",")]
    if not text or any(not p for p in parts):
        raise ConfigError(f"{flag} needs a comma-separated list such as 2,4,8 (got {text!r})")
    return parts


def validate_experts(experts: list[int]) -> list[int]:
    if not experts:
        raise ConfigError("--experts: give at least one expert count")
    for v in experts:
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise ConfigError(f"--experts: an MoE layer needs at least 2 experts, got {v!r}")
    if len(set(experts)) != len(experts):
        raise ConfigError(f"--experts: duplicate values in {experts}")
    return list(experts)


def validate_scales(scales: list[float]) -> list[float]:
    if not scales:
        raise ConfigError("--scale: give at least one model scale")
    for v in scales:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 < v <= 1:
            raise ConfigError(f"--scale: a model scale must be in (0, 1], got {v!r}")
    if len(set(scales)) != len(scales):
        raise ConfigError(f"--scale: duplicate values in {scales}")
    return [float(v) for v in scales]


@dataclass
class SweepConfig:
    """A grid and how each cell is trained and evaluated.

    ``train_overrides``: :class:`~robustmoe_bench.training.TrainConfig` fields applied on top of
    ``preset`` in every cell (e.g. ``{"epochs": 2, "arch": "resnet-tiny"}``). ``n_examples``: test
    examples per evaluation (``None``: the whole test set). ``dense_reference``: also train/evaluate
    ``dense_method`` once.
    """

    experts: list[int]
    scales: list[float]
    method: str = "advmoe"
    preset: str = "fmnist-mini"
    train_overrides: dict[str, Any] = field(default_factory=dict)
    suite: str = "quick"
    n_examples: Optional[int] = 1000
    seed: int = 0
    dense_reference: bool = True
    dense_method: str = "at-dense"
    data_root: Optional[str] = None  # where data lives: not part of any cell's identity

    def validate(self) -> "SweepConfig":
        from ..training import METHOD_KINDS

        self.experts = validate_experts(list(self.experts))
        self.scales = validate_scales(list(self.scales))
        if METHOD_KINDS.get(self.method) != "moe":
            moe = sorted(m for m, k in METHOD_KINDS.items() if k == "moe")
            raise ConfigError(f"--method {self.method!r} does not train an MoE model; choose one of {', '.join(moe)}")
        if self.dense_reference and METHOD_KINDS.get(self.dense_method) != "dense":
            raise ConfigError(f"the Dense reference method must train a Dense model, got {self.dense_method!r}")
        for k in ("method", "experts", "scale", "preset", "data_root"):
            if k in self.train_overrides:
                raise ConfigError(f"training option {k!r} is set by the sweep itself, not as an override")
        if self.n_examples is not None and self.n_examples < 1:
            raise ConfigError(f"--n-examples must be at least 1, got {self.n_examples}")
        return self

    def train_config(self, method: str, experts: int | None, scale: float | None):
        """The :class:`TrainConfig` of one cell (validated; raises ConfigError for bad overrides)."""
        from ..training import TrainConfig

        kw: dict[str, Any] = dict(self.train_overrides, method=method, seed=self.train_overrides.get("seed", self.seed))
        if experts is not None:
            kw["scale"] = scale
            if METHOD_KINDS.get(method) == "moe":
                kw["experts"] = experts
        if self.data_root is not None:
            kw["data_root"] = self.data_root
        return TrainConfig.from_preset(self.preset, **kw)


def cell_name(experts: int | None, scale: float | None) -> str:
    return "dense" if experts is None else f"N{experts}_r{scale:g}"


# --------------------------------------------------------------------------- results
@dataclass
class CellResult:
    """One finished cell. ``experts``/``scale`` are ``None`` for the Dense reference. Accuracies in %."""

    name: str
    method: str
    experts: Optional[int]
    scale: Optional[float]
    clean_acc: float
    robust_acc: float  # worst case over the suite (the headline number)
    robust_acc_by_attack: dict[str, float]
    gflops: Optional[dict[str, float]]
    unreliable: bool
    checkpoint: str
    eval_json: str
    train_seconds: float
    eval_seconds: float


@dataclass
class SweepResult:
    """Every cell (grid order: experts outer, scale inner) and the Dense reference."""

    config: dict[str, Any]
    cells: list[CellResult]
    dense: Optional[CellResult]
    skipped: list[str]  # cells found finished and not recomputed in this run
    seconds: float
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def cell(self, experts: int, scale: float) -> CellResult:
        for c in self.cells:
            if c.experts == experts and c.scale is not None and math.isclose(c.scale, scale):
                return c
        raise KeyError(f"no cell N={experts}, r={scale:g}")

    def grid(self) -> list[list[float]]:
        """Worst-case robust accuracy ``[len(experts)][len(scales)]``."""
        return [[self.cell(n, r).robust_acc for r in self.config["scales"]] for n in self.config["experts"]]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is unreadable or corrupt ({e}); delete it to recompute the cell") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is corrupt; delete it to recompute the cell")
    return data


# --------------------------------------------------------------------------- running
def default_train_fn(config: Any, out_dir: Path, resume: bool) -> Path:
    from ..training import train

    return Path(train(config, out_dir, progress=False, resume=resume).ckpt)


def make_eval_fn(cfg: SweepConfig) -> EvalFn:
    """The real evaluation of a cell's checkpoint, resumable after its last finished batch."""

    def eval_fn(ckpt: Path, out: Path) -> dict:
        from ..evaluation import evaluate

        return evaluate(str(ckpt), suite=cfg.suite, n_examples=cfg.n_examples, seed=cfg.seed,
                        data_root=cfg.data_root, out=out, resume=True, progress=False).to_dict()

    return eval_fn


def run_cell(
    cfg: SweepConfig, experts: int | None, scale: float | None, out: Path, train_fn: TrainFn, eval_fn: EvalFn,
) -> tuple[CellResult, bool]:
    """Train and evaluate one cell unless already finished; returns ``(result, skipped)``."""
    method = cfg.method if experts is not None else cfg.dense_method
    tcfg = cfg.train_config(method, experts, scale)
    identity = {"train": tcfg.run_identity(), "suite": cfg.suite, "n_examples": cfg.n_examples, "seed": cfg.seed}
    name = cell_name(experts, scale)
    cell_dir = out / "cells" / name
    done_path, trained_path = cell_dir / "done.json", cell_dir / "trained.json"
    if done_path.is_file():
        done = _read_json(done_path)
        if done.get("identity") != identity:
            raise ConfigError(
                f"{done_path} was computed with different settings; use another --out or delete that cell"
            )
        return CellResult(**done["result"]), True

    train_dir, eval_path = cell_dir / "train", cell_dir / "eval.json"
    ckpt: Path | None = None
    train_seconds = 0.0
    if trained_path.is_file():
        t = _read_json(trained_path)
        if t.get("identity") == identity and Path(t["checkpoint"]).is_file():
            ckpt, train_seconds = Path(t["checkpoint"]), float(t.get("seconds", 0.0))
    if ckpt is None:
        t0 = time.perf_counter()
        # a config.json in the run folder means an interrupted run of this cell: continue it
        ckpt = Path(train_fn(tcfg, train_dir, (train_dir / "config.json").is_file()))
        train_seconds = time.perf_counter() - t0
        _write_json(trained_path, {"identity": identity, "checkpoint": str(ckpt), "seconds": train_seconds})
    t0 = time.perf_counter()
    ev = eval_fn(ckpt, eval_path)
    eval_seconds = time.perf_counter() - t0
    res = CellResult(
        name=name, method=method, experts=experts, scale=scale, clean_acc=float(ev["clean_acc"]),
        robust_acc=float(ev["robust_acc"]["worst_case"]),
        robust_acc_by_attack={k: float(v) for k, v in ev["robust_acc"].items()},
        gflops=ev.get("gflops"), unreliable=bool(ev.get("unreliable", False)), checkpoint=str(ckpt),
        eval_json=str(eval_path), train_seconds=train_seconds, eval_seconds=eval_seconds,
    )
    _write_json(done_path, {"schema_version": SCHEMA_VERSION, "identity": identity, "result": asdict(res)})
    return res, False


def run_sweep(
    cfg: SweepConfig,
    out: str | Path,
    train_fn: TrainFn | None = None,
    eval_fn: EvalFn | None = None,
    on_cell: Callable[[str, bool], None] | None = None,
) -> SweepResult:
    """Run (or resume) the sweep into ``out``; writes ``sweep.json``, ``sweep.md`` and ``sweep.png``.

    ``on_cell(name, skipped)`` is called after each cell. Every cell's training configuration is
    validated before any training starts, so a bad option fails at once.
    """
    cfg.validate()
    out = Path(out)
    grid = [(n, r) for n in cfg.experts for r in cfg.scales]
    for n, r in grid[:1] + ([(None, None)] if cfg.dense_reference else []):
        cfg.train_config(cfg.method if n is not None else cfg.dense_method, n, r)
    if cfg.n_examples is not None:  # fail on too many examples before hours of training
        from ..data import get_dataset_info

        size = get_dataset_info(cfg.train_config(cfg.method, *grid[0]).dataset).test_size
        if size is not None and cfg.n_examples > size:
            raise ConfigError(f"--n-examples {cfg.n_examples} exceeds the test set ({size} examples)")
    train_fn = train_fn or default_train_fn
    eval_fn = eval_fn or make_eval_fn(cfg)
    t0 = time.perf_counter()
    cells, skipped = [], []
    dense = None
    todo: list[tuple[int | None, float | None]] = ([(None, None)] if cfg.dense_reference else []) + grid
    for n, r in todo:
        res, was_skipped = run_cell(cfg, n, r, out, train_fn, eval_fn)
        if was_skipped:
            skipped.append(res.name)
        if n is None:
            dense = res
        else:
            cells.append(res)
        if on_cell is not None:
            on_cell(res.name, was_skipped)
    result = SweepResult(config=asdict(cfg), cells=cells, dense=dense, skipped=skipped,
                         seconds=time.perf_counter() - t0)
    plot_sweep(result, out / "sweep.png")
    atomic_write_bytes(out / "sweep.md", markdown_table(result).encode())
    atomic_write_bytes(out / "sweep.json", (result.to_json() + "\n").encode())
    return result


# --------------------------------------------------------------------------- table and figure
def markdown_table(result: SweepResult) -> str:
    """Worst-case robust / clean accuracy per cell; rows experts N, columns scale r."""
    cfg = result.config
    lines = [
        f"# Sweep: {cfg['method']} ({cfg['preset']}), suite {cfg['suite']}, "
        f"{cfg['n_examples'] or 'all'} test examples",
        "",
        "Worst-case robust accuracy / clean accuracy (%).",
        "",
        "| experts N \\ scale r | " + " | ".join(f"{r:g}" for r in cfg["scales"]) + " |",
        "|---|" + "---|" * len(cfg["scales"]),
    ]
    for n in cfg["experts"]:
        row = [f"{result.cell(n, r).robust_acc:.2f} / {result.cell(n, r).clean_acc:.2f}" for r in cfg["scales"]]
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    if result.dense is not None:
        d = result.dense
        lines += ["", f"Dense reference ({d.method}): {d.robust_acc:.2f} / {d.clean_acc:.2f}"]
    flagged = [c.name for c in result.cells + ([result.dense] if result.dense else []) if c.unreliable]
    if flagged:
        lines += ["", f"Gradient-masking flags failed (numbers unreliable): {', '.join(flagged)}"]
    return "\n".join(lines) + "\n"


def plot_sweep(result: SweepResult, path: str | Path) -> Path:
    """Heatmap of worst-case robust accuracy, experts x scale, annotated; Dense reference on the colorbar."""
    from matplotlib.lines import Line2D

    from .plots import new_axes, save_figure

    cfg = result.config
    grid = result.grid()
    values = [v for row in grid for v in row] + ([result.dense.robust_acc] if result.dense else [])
    lo, hi = min(values), max(values)
    if hi - lo < 1:
        lo, hi = lo - 0.5, hi + 0.5
    fig, ax = new_axes(figsize=(1.3 * len(cfg["scales"]) + 4, 0.9 * len(cfg["experts"]) + 3))
    im = ax.imshow(grid, cmap="viridis", vmin=lo, vmax=hi, aspect="auto", origin="lower")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            shade = (v - lo) / (hi - lo)
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=10,
                    color="black" if shade > 0.6 else "white")
    ax.set_xticks(range(len(cfg["scales"])))
    ax.set_xticklabels([f"{r:g}" for r in cfg["scales"]])
    ax.set_yticks(range(len(cfg["experts"])))
    ax.set_yticklabels([str(n) for n in cfg["experts"]])
    ax.set_xlabel("model scale r (expert width / Dense width)")
    ax.set_ylabel("number of experts N")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(f"worst-case robust accuracy (%, suite {cfg['suite']})")
    title = f"{cfg['method']} sweep ({cfg['preset']})"
    handles = [Line2D([], [], marker="s", linestyle="", color="grey", label="MoE cell: robust acc (%)")]
    if result.dense is not None:
        d = result.dense
        cb.ax.axhline(d.robust_acc, color="red", linewidth=2)
        title += f"; Dense reference {d.robust_acc:.1f}%"
        handles.append(Line2D([], [], color="red", linewidth=2,
                              label=f"Dense reference ({d.method}): {d.robust_acc:.1f}% (line on colorbar)"))
    ax.set_title(title)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=8, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)
