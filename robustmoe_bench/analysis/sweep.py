"""Expert-count x model-scale sweep (SPEC §6, the paper's Figs. 7-8): train and evaluate every cell of
the grid N x r, plus one Dense reference, and tabulate / plot worst-case robust accuracy.

Designs (``designs``): ``channel`` (AdvMoE's channel-slice experts: the grid N x r) and the full-copy
``conv``/``block`` experts with a top-k gate (the grid N x k, ``ks``; no model scale; cells with
k > N are left out). A sweep may hold several designs: design x experts x (scale or k).

Folder layout (``out``)::

    cells/N{N}_r{r}/train/     the training run (ckpt.pt, config.json, metrics.jsonl, ...)
    cells/{conv|block}_N{N}_k{k}/...   a full-copy cell, same layout
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


def parse_designs(text: str) -> list[str]:
    """``"channel,conv"`` -> ``["channel", "conv"]`` (``--design``)."""
    return validate_designs(_parts(text, "--design"))


def parse_ks(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]`` (``--k``)."""
    out = []
    for part in _parts(text, "--k"):
        try:
            out.append(int(part))
        except ValueError:
            raise ConfigError(f"--k: {part!r} is not an integer") from None
    return validate_ks(out)


def validate_designs(designs: list[str]) -> list[str]:
    from ..models.topk import EXPERT_KINDS

    if not designs:
        raise ConfigError("--design: give at least one design")
    bad = [d for d in designs if d not in EXPERT_KINDS]
    if bad:
        raise ConfigError(f"--design: unknown design(s) {', '.join(map(repr, bad))}; known: {', '.join(EXPERT_KINDS)}")
    if len(set(designs)) != len(designs):
        raise ConfigError(f"--design: duplicate values in {designs}")
    return list(designs)


def validate_ks(ks: list[int]) -> list[int]:
    if not ks:
        raise ConfigError("--k: give at least one k")
    for v in ks:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"--k: experts per input must be integers >= 1, got {v!r}")
    if len(set(ks)) != len(ks):
        raise ConfigError(f"--k: duplicate values in {ks}")
    return list(ks)


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
    designs: list[str] = field(default_factory=lambda: ["channel"])
    ks: list[int] = field(default_factory=lambda: [1])

    def validate(self) -> "SweepConfig":
        from ..training import METHOD_KINDS

        self.experts = validate_experts(list(self.experts))
        self.scales = validate_scales(list(self.scales))
        self.designs = validate_designs(list(self.designs))
        self.ks = validate_ks(list(self.ks))
        if self.designs == ["channel"] and self.ks != [1]:
            raise ConfigError("--k applies to the conv and block designs (the channel design routes top-1)")
        if not self.cells():
            raise ConfigError(f"no cell: every k in {self.ks} exceeds every expert count in {self.experts}")
        if METHOD_KINDS.get(self.method) != "moe":
            moe = sorted(m for m, k in METHOD_KINDS.items() if k == "moe")
            raise ConfigError(f"--method {self.method!r} does not train an MoE model; choose one of {', '.join(moe)}")
        if self.dense_reference and METHOD_KINDS.get(self.dense_method) != "dense":
            raise ConfigError(f"the Dense reference method must train a Dense model, got {self.dense_method!r}")
        for k in ("method", "experts", "scale", "preset", "data_root", "moe", "k"):
            if k in self.train_overrides:
                raise ConfigError(f"training option {k!r} is set by the sweep itself, not as an override")
        if self.n_examples is not None and self.n_examples < 1:
            raise ConfigError(f"--n-examples must be at least 1, got {self.n_examples}")
        return self

    def cells(self) -> list["Cell"]:
        """The grid in order: designs outer, then experts, then scale (channel) or k (conv/block)."""
        out: list[Cell] = []
        for d in self.designs:
            for n in self.experts:
                if d == "channel":
                    out += [Cell(d, n, r, None) for r in self.scales]
                else:
                    out += [Cell(d, n, None, k) for k in self.ks if k <= n]
        return out

    def train_config(self, method: str, experts: int | None, scale: float | None, design: str = "channel",
                     k: int | None = None):
        """The :class:`TrainConfig` of one cell (validated; raises ConfigError for bad overrides)."""
        from ..training import TrainConfig

        kw: dict[str, Any] = dict(self.train_overrides, method=method, seed=self.train_overrides.get("seed", self.seed))
        if experts is not None and design != "channel":
            kw.update(experts=experts, moe=design, k=k)
        elif experts is not None:
            kw["scale"] = scale
            if METHOD_KINDS.get(method) == "moe":
                kw["experts"] = experts
        if self.data_root is not None:
            kw["data_root"] = self.data_root
        return TrainConfig.from_preset(self.preset, **kw)


@dataclass(frozen=True)
class Cell:
    """One grid cell: ``design`` with ``experts`` and ``scale`` (channel) or ``k`` (conv/block)."""

    design: str
    experts: int
    scale: Optional[float]
    k: Optional[int]

    @property
    def name(self) -> str:
        if self.design == "channel":
            return cell_name(self.experts, self.scale)
        return f"{self.design}_N{self.experts}_k{self.k}"


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
    design: str = "channel"
    k: Optional[int] = None


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
            if c.design == "channel" and c.experts == experts and c.scale is not None and math.isclose(c.scale, scale):
                return c
        raise KeyError(f"no cell N={experts}, r={scale:g}")

    def topk_cell(self, design: str, experts: int, k: int) -> Optional[CellResult]:
        """The full-copy cell, or None where ``k > experts`` (not run)."""
        for c in self.cells:
            if c.design == design and c.experts == experts and c.k == k:
                return c
        return None

    def grid(self) -> list[list[float]]:
        """Worst-case robust accuracy ``[len(experts)][len(scales)]`` of the channel design."""
        return [[self.cell(n, r).robust_acc for r in self.config["scales"]] for n in self.config["experts"]]

    def topk_rows(self) -> list[tuple[str, int, list[Optional[CellResult]]]]:
        """``(design, N, [cell per k or None])`` for every full-copy design and expert count."""
        designs = [d for d in self.config.get("designs", ["channel"]) if d != "channel"]
        return [(d, n, [self.topk_cell(d, n, k) for k in self.config["ks"]]) for d in designs for n in self.config["experts"]]


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
    design: str = "channel", k: int | None = None,
) -> tuple[CellResult, bool]:
    """Train and evaluate one cell unless already finished; returns ``(result, skipped)``."""
    method = cfg.method if experts is not None else cfg.dense_method
    tcfg = cfg.train_config(method, experts, scale, design, k)
    identity = {"train": tcfg.run_identity(), "suite": cfg.suite, "n_examples": cfg.n_examples, "seed": cfg.seed}
    name = cell_name(experts, scale) if (experts is None or design == "channel") else Cell(design, experts, None, k).name
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
        design=design if experts is not None else "dense", k=k,
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
    grid = cfg.cells()
    first = {}
    for c in grid:  # one cell of each design: bad options fail before any training
        first.setdefault(c.design, c)
    for c in first.values():
        cfg.train_config(cfg.method, c.experts, c.scale, c.design, c.k)
    if cfg.dense_reference:
        cfg.train_config(cfg.dense_method, None, None)
    if cfg.n_examples is not None:  # fail on too many examples before hours of training
        from ..data import get_dataset_info

        g0 = grid[0]
        size = get_dataset_info(cfg.train_config(cfg.method, g0.experts, g0.scale, g0.design, g0.k).dataset).test_size
        if size is not None and cfg.n_examples > size:
            raise ConfigError(f"--n-examples {cfg.n_examples} exceeds the test set ({size} examples)")
    train_fn = train_fn or default_train_fn
    eval_fn = eval_fn or make_eval_fn(cfg)
    t0 = time.perf_counter()
    cells, skipped = [], []
    dense = None
    todo: list[Cell | None] = ([None] if cfg.dense_reference else []) + list(grid)
    for c in todo:
        if c is None:
            res, was_skipped = run_cell(cfg, None, None, out, train_fn, eval_fn)
        else:
            res, was_skipped = run_cell(cfg, c.experts, c.scale, out, train_fn, eval_fn, c.design, c.k)
        if was_skipped:
            skipped.append(res.name)
        if c is None:
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
    ]
    if "channel" in cfg.get("designs", ["channel"]):
        lines += [
            "",
            "| experts N \\ scale r | " + " | ".join(f"{r:g}" for r in cfg["scales"]) + " |",
            "|---|" + "---|" * len(cfg["scales"]),
        ]
        for n in cfg["experts"]:
            row = [f"{result.cell(n, r).robust_acc:.2f} / {result.cell(n, r).clean_acc:.2f}" for r in cfg["scales"]]
            lines.append(f"| {n} | " + " | ".join(row) + " |")
    rows = result.topk_rows()
    if rows:
        lines += ["", "Full-copy experts with a top-k gate (ConvMoE: conv, BlockMoE: block):", "",
                  "| design, experts N \\ k | " + " | ".join(str(k) for k in cfg["ks"]) + " |",
                  "|---|" + "---|" * len(cfg["ks"])]
        for d, n, cells in rows:
            txt = [("-" if c is None else f"{c.robust_acc:.2f} / {c.clean_acc:.2f}") for c in cells]
            lines.append(f"| {d}, {n} | " + " | ".join(txt) + " |")
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
    if "channel" in cfg.get("designs", ["channel"]):
        grid = result.grid()
        xlabels, ylabels = [f"{r:g}" for r in cfg["scales"]], [str(n) for n in cfg["experts"]]
        xtitle, ytitle = "model scale r (expert width / Dense width)", "number of experts N"
    else:  # full-copy designs only: rows (design, N), columns k; cells with k > N blank
        rows = result.topk_rows()
        grid = [[float("nan") if c is None else c.robust_acc for c in cells] for _, _, cells in rows]
        xlabels, ylabels = [str(k) for k in cfg["ks"]], [f"{d}, N={n}" for d, n, _ in rows]
        xtitle, ytitle = "experts per input k (top-k gate)", "design, number of experts N"
    values = [v for row in grid for v in row if v == v] + ([result.dense.robust_acc] if result.dense else [])
    lo, hi = min(values), max(values)
    if hi - lo < 1:
        lo, hi = lo - 0.5, hi + 0.5
    fig, ax = new_axes(figsize=(1.3 * len(xlabels) + 4, 0.9 * len(ylabels) + 3))
    im = ax.imshow(grid, cmap="viridis", vmin=lo, vmax=hi, aspect="auto", origin="lower")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v != v:
                ax.text(j, i, "k > N", ha="center", va="center", fontsize=8, color="grey")
                continue
            shade = (v - lo) / (hi - lo)
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=10,
                    color="black" if shade > 0.6 else "white")
    ax.set_xticks(range(len(xlabels)))
    ax.set_xticklabels(xlabels)
    ax.set_yticks(range(len(ylabels)))
    ax.set_yticklabels(ylabels)
    ax.set_xlabel(xtitle)
    ax.set_ylabel(ytitle)
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
