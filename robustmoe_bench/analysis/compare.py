"""One comparison table over several evaluation results files, laid out like the paper's Table 1.

Rows are models (named by the results file's stem); columns: architecture, data set, training method,
model kind (experts / scale / router), clean accuracy, robust accuracy under each attack (the union
over all files; ``-`` where a file did not run that attack), the per-example worst case, GFLOPs per
input (pathway + router) and the saving against a Dense model of the same architecture and data set
when one is among the inputs (``1 - gflops / dense_gflops``; else ``-``).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RobustMoEError
from .. import jsonsafe

SCHEMA_VERSION = 1
WORST = "worst_case"
MISSING = "-"


class ResultsFileError(RobustMoEError):
    """An evaluation results file is missing, not JSON, or not in robustmoe-bench's results format."""


@dataclass(frozen=True)
class CompareRow:
    """One results file, reduced to what the table shows (accuracies in %, GFLOPs per input)."""

    name: str
    path: str
    arch: str
    dataset: str
    method: str
    kind: str
    experts: int
    scale: float
    router: str
    clean_acc: float
    robust_acc: dict[str, float]
    worst_case: float
    gflops: float | None
    saving: float | None = None

    @property
    def kind_label(self) -> str:
        if self.kind == "moe":
            return f"moe N={self.experts} r={self.scale:g} {self.router}"
        if self.kind in ("sdense", "sparse"):
            return f"{self.kind} r={self.scale:g}"
        return self.kind


@dataclass
class CompareTable:
    """Rows in input order; ``attacks``: union of attack names in first-seen order (worst case excluded)."""

    rows: list[CompareRow]
    attacks: list[str] = field(default_factory=list)

    def headers(self) -> list[str]:
        return (["model", "arch", "dataset", "method", "kind", "clean"] + self.attacks
                + ["worst case", "GFLOPs", "saving vs Dense"])

    def cells(self) -> list[list[str]]:
        """Formatted cells: accuracies with two decimals, GFLOPs with four significant digits."""
        out = []
        for r in self.rows:
            acc = [_pct(r.robust_acc[a]) if a in r.robust_acc else MISSING for a in self.attacks]
            out.append([r.name, r.arch, r.dataset, r.method, r.kind_label, _pct(r.clean_acc), *acc,
                        _pct(r.worst_case),
                        MISSING if r.gflops is None else f"{r.gflops:.4g}",
                        MISSING if r.saving is None else f"{100 * r.saving:.1f}%"])
        return out

    def compact(self, attacks: tuple[str, ...] = ("pgd-50", "autoattack")) -> "CompareTable":
        """The same rows with only the headline attacks (those of ``attacks`` present) as columns: a
        terminal-width view; the worst case still covers every attack run."""
        return CompareTable(self.rows, [a for a in self.attacks if a in attacks])

    def to_rich(self):
        """The table as a ``rich.table.Table`` for the terminal."""
        from rich.table import Table

        t = Table(title="Model comparison (accuracy in %, worst case = per-example over every attack run)")
        for i, h in enumerate(self.headers()):
            t.add_column(h, justify="left" if i < 5 else "right", style="bold" if i == 0 else None)
        for row in self.cells():
            t.add_row(*row)
        return t

    def to_markdown(self) -> str:
        """GitHub Markdown table (text left-aligned, numbers right-aligned), newline-terminated."""
        heads = self.headers()
        align = [":---" if i < 5 else "---:" for i in range(len(heads))]
        lines = ["| " + " | ".join(heads) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(row) + " |" for row in self.cells()]
        return "\n".join(lines) + "\n"


def _pct(v: float) -> str:
    return f"{v:.2f}"


def _number(d: dict, key: str, path: Path, where: str = "") -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ResultsFileError(f"{path}: {where}{key!r} must be a number, got {v!r}")
    return float(v)


def read_result(path: str | os.PathLike) -> CompareRow:
    """Parse and check one evaluation results JSON (format: docs/DEVELOPING.md)."""
    p = Path(path)
    try:
        data = jsonsafe.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsFileError(f"{p}: no such results file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsFileError(f"{p}: not a JSON results file ({e})") from None
    if not isinstance(data, dict) or "schema_version" not in data or "robust_acc" not in data:
        raise ResultsFileError(f"{p}: not a robustmoe-bench evaluation results file "
                               "(needs schema_version, clean_acc, robust_acc, model)")
    if data["schema_version"] != SCHEMA_VERSION:
        raise ResultsFileError(f"{p}: results schema_version {data['schema_version']!r} is not supported "
                               f"(expected {SCHEMA_VERSION})")
    clean = _number(data, "clean_acc", p)
    robust = data["robust_acc"]
    if not isinstance(robust, dict) or WORST not in robust:
        raise ResultsFileError(f"{p}: robust_acc must be an object with a {WORST!r} entry")
    accs = {str(k): _number(robust, k, p, "robust_acc ") for k in robust}
    model = data.get("model")
    if not isinstance(model, dict) or not all(isinstance(model.get(k), str) for k in ("arch", "kind")):
        raise ResultsFileError(f"{p}: 'model' must be the model spec (with arch and kind)")
    g = data.get("gflops")
    total = None
    if isinstance(g, dict) and g.get("total") is not None:
        total = _number(g, "total", p, "gflops ")
    training = data.get("training") if isinstance(data.get("training"), dict) else {}
    return CompareRow(
        name=p.stem, path=str(p), arch=model["arch"], dataset=str(model.get("dataset", data.get("dataset", "?"))),
        method=str(training.get("method", MISSING)), kind=model["kind"], experts=int(model.get("experts", 0)),
        scale=float(model.get("scale", 1.0)), router=str(model.get("router", "")), clean_acc=clean,
        robust_acc={k: v for k, v in accs.items() if k != WORST}, worst_case=accs[WORST], gflops=total,
    )


def compare_results(paths: list[str | os.PathLike]) -> CompareTable:
    """Read every results file (errors name the file) and build the comparison table."""
    if not paths:
        raise ResultsFileError("no results files given")
    rows = [read_result(p) for p in paths]
    names = [r.name for r in rows]
    if len(set(names)) < len(names):  # same stem in different folders: qualify by the folder
        rows = [_renamed(r, f"{Path(r.path).parent.name}/{r.name}") if names.count(r.name) > 1 else r
                for r in rows]
    dense = {}
    for r in rows:
        if r.kind == "dense" and r.gflops is not None:
            dense.setdefault((r.arch, r.dataset), r.gflops)
    rows = [_with_saving(r, dense.get((r.arch, r.dataset))) for r in rows]
    attacks: list[str] = []
    for r in rows:
        attacks += [a for a in r.robust_acc if a not in attacks]
    return CompareTable(rows, attacks)


def _renamed(r: CompareRow, name: str) -> CompareRow:
    return CompareRow(**{**r.__dict__, "name": name})


def _with_saving(r: CompareRow, dense_gflops: float | None) -> CompareRow:
    if r.gflops is None or not dense_gflops:
        return r
    return CompareRow(**{**r.__dict__, "saving": 1.0 - r.gflops / dense_gflops})


__all__ = ["CompareRow", "CompareTable", "ResultsFileError", "compare_results", "read_result"]
