"""One comparison table over several evaluation results files, laid out like the paper's Table 1.

Rows are models (named by the results file's stem); columns: architecture, data set, training method,
model kind (experts / scale / router), clean accuracy, robust accuracy under each attack (the union
over all files; ``-`` where a file did not run that attack), the per-example worst case with its 95 %
Wilson interval, ``n`` (``n of N`` for a subset), GFLOPs per input (pathway + router), the saving
against a Dense model of the same architecture and data set when one is among the inputs
(``1 - gflops / dense_gflops``; else ``-``), and ``vs best``: the exact McNemar test of the row's
worst case against the best row's, when both were evaluated on the same examples (results carry their
per-example outcomes and the digest of the example indices). ``p=0.41 n.s.`` marks a difference that
is not significant at 5 %: those two models are not shown to differ. ``-``: not paired (other examples,
or results written before per-example outcomes existed), so not tested.

The terminal view (:meth:`CompareTable.to_rich`) stacks each model's description and each interval
under its number when the console is narrower than the full table, so an 80-column terminal shows
every cell whole.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RobustMoEError
from ..stats import count_of, mcnemar_paired, wilson
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
    n: int = 0
    n_total: int | None = None
    worst_interval: tuple[float, float] | None = None
    outcomes: str | None = None
    indices_sha256: str | None = None
    vs_best: str = MISSING
    #: full-copy expert design (``conv``/``block``) and its top-k; "channel"/1 for the AdvMoE design
    design: str = "channel"
    k: int = 1
    #: routing health and router robustness as one cell: the busiest expert's share (highest over the MoE
    #: layers), COLLAPSED when some layer sends (almost) every input to one expert, then the share of inputs
    #: whose routing PGD-50 left unchanged; "-" for a model without routing
    routing: str = MISSING

    @property
    def n_label(self) -> str:
        if not self.n:
            return MISSING
        return f"{self.n} of {self.n_total}" if self.n_total and self.n_total != self.n else str(self.n)

    @property
    def worst_text(self) -> str:
        iv = self.worst_interval
        return _pct(self.worst_case) + ("" if iv is None else f" [{iv[0]:.1f}, {iv[1]:.1f}]")

    @property
    def kind_label(self) -> str:
        if self.kind == "moe" and self.design != "channel":
            return f"{self.design}-moe N={self.experts} top-{self.k}"
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
                + ["worst case [95% CI]", "n", "vs best", "GFLOPs", "saving vs Dense", "expert use; router robust"])

    def cells(self) -> list[list[str]]:
        """Formatted cells: accuracies with two decimals, GFLOPs with four significant digits."""
        out = []
        for r in self.rows:
            acc = [_pct(r.robust_acc[a]) if a in r.robust_acc else MISSING for a in self.attacks]
            out.append([r.name, r.arch, r.dataset, r.method, r.kind_label, _pct(r.clean_acc), *acc,
                        r.worst_text, r.n_label, r.vs_best,
                        MISSING if r.gflops is None else f"{r.gflops:.4g}",
                        MISSING if r.saving is None else f"{100 * r.saving:.1f}%", r.routing])
        return out

    def compact(self, attacks: tuple[str, ...] = ("pgd-50", "autoattack")) -> "CompareTable":
        """The same rows with only the headline attacks (those of ``attacks`` present) as columns: a
        terminal-width view; the worst case still covers every attack run."""
        return CompareTable(self.rows, [a for a in self.attacks if a in attacks])

    def to_rich(self, width: int | None = None):
        """The table as a ``rich.table.Table``. ``width``: the console's width; when the full layout
        would not fit, a stacked one (description under the model name, interval under the worst
        case; arch/dataset/method/kind and the saving folded into the model cell) keeps every cell whole."""
        from rich import box
        from rich.markup import escape
        from rich.table import Table

        title = "Model comparison (accuracy in %, worst case = per-example over every attack run)"
        if width is None or width >= self._full_width():
            t = Table(title=title)
            for i, h in enumerate(self.headers()):
                t.add_column(escape(h), justify="left" if i < 5 else "right", style="bold" if i == 0 else None)
            for row in self.cells():
                t.add_row(*(escape(c) for c in row))
            return t
        # What every row shares goes into the title once; each model cell keeps only what differs.
        shared = []
        for label, get in (("arch", lambda r: r.arch), ("dataset", lambda r: r.dataset), ("n", lambda r: r.n_label)):
            values = {get(r) for r in self.rows}
            if len(values) == 1:
                shared.append(f"{label} {values.pop()}")
        t = Table(title=title + (f"; {', '.join(shared)}" if shared else ""), box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1))
        t.add_column("model", style="bold", overflow="fold", min_width=min(20, max(len(r.name) for r in self.rows)))
        t.add_column("clean", justify="right", no_wrap=True)
        for a in self.attacks:
            t.add_column(escape(a), justify="right", no_wrap=True)
        t.add_column("worst\n[95% CI]", justify="right", no_wrap=True)
        t.add_column("vs best", justify="right", no_wrap=True)
        t.add_column("GFLOPs", justify="right", no_wrap=True)
        for r in self.rows:
            parts = [r.kind_label] if r.method in (MISSING, r.name) else [r.method, r.kind_label]
            parts += [x for label, x in (("arch", r.arch), ("dataset", r.dataset), ("n", f"n={r.n_label}"))
                      if not any(s.startswith(label + " ") for s in shared)]
            if r.saving is not None:
                parts.append(f"saves {100 * r.saving:.0f}%")
            if r.routing != MISSING:  # routing health in the model cell: a column would not fit
                use, _, robust = r.routing.partition("; ")
                parts.append(f"busiest expert {use}" if use != "not recorded" else "expert use not recorded")
                if robust:
                    parts.append(f"router robust {robust}")
            desc = f"[dim]{escape(', '.join(parts))}[/]"
            acc = [_pct(r.robust_acc[a]) if a in r.robust_acc else MISSING for a in self.attacks]
            iv = r.worst_interval
            worst = _pct(r.worst_case) + ("" if iv is None else f"\n[dim]\\[{iv[0]:.1f}, {iv[1]:.1f}][/]")
            vs = escape(r.vs_best).replace(" n.s.", "\nn.s.")
            t.add_row(f"{escape(r.name)}\n{desc}", _pct(r.clean_acc), *acc, worst, vs,
                      MISSING if r.gflops is None else f"{r.gflops:.4g}")
        return t

    def _full_width(self) -> int:
        """Characters the full layout needs (cells, padding and borders)."""
        cells = [self.headers()] + self.cells()
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
        return sum(widths) + 3 * len(widths) + 1

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
    experts, scale = model.get("experts", 0), model.get("scale", 1.0)
    if isinstance(experts, bool) or not isinstance(experts, int):
        raise ResultsFileError(f"{p}: model 'experts' must be an integer, got {experts!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ResultsFileError(f"{p}: model 'scale' must be a number, got {scale!r}")
    n = data.get("n_examples", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ResultsFileError(f"{p}: 'n_examples' must be a non-negative integer, got {n!r}")
    n_total = data.get("n_total")
    if n_total is not None and (isinstance(n_total, bool) or not isinstance(n_total, int)):
        raise ResultsFileError(f"{p}: 'n_total' must be an integer, got {n_total!r}")
    ex = data.get("examples") if isinstance(data.get("examples"), dict) else {}
    outcomes = ex.get("worst_case")
    if outcomes is not None and (not isinstance(outcomes, str) or len(outcomes) != n or set(outcomes) - {"0", "1"}):
        raise ResultsFileError(f"{p}: examples.worst_case must be a string of {n} '0'/'1' characters")
    sha = ex.get("indices_sha256") if isinstance(ex.get("indices_sha256"), str) else None
    iv = None
    if n:
        w = wilson(min(n, max(0, count_of(accs[WORST], n))), n)
        iv = (w.low, w.high)
    return CompareRow(
        name=p.stem, path=str(p), arch=model["arch"], dataset=str(model.get("dataset", data.get("dataset", "?"))),
        method=str(training.get("method", MISSING)), kind=model["kind"], experts=experts,
        scale=float(scale), router=str(model.get("router", "")), clean_acc=clean,
        robust_acc={k: v for k, v in accs.items() if k != WORST}, worst_case=accs[WORST], gflops=total,
        n=n, n_total=n_total, worst_interval=iv, outcomes=outcomes, indices_sha256=sha,
        design=str(model.get("moe", "channel")), k=int(model.get("k", 1)) if isinstance(model.get("k", 1), int) else 1,
        routing=_routing_cell(data, model["kind"], p),
    )


def _routing_cell(data: dict, kind: str, p: Path) -> str:
    """The ``expert use; router robust`` cell of a results file (see :attr:`CompareRow.routing`)."""
    if kind != "moe":
        return MISSING
    use = data.get("expert_use")
    if use is None:
        text = "not recorded"
        collapsed = None
    else:
        busiest = use.get("busiest_share") if isinstance(use, dict) else None
        if (not isinstance(busiest, list) or not busiest or not all(isinstance(b, (int, float)) for b in busiest)
                or not isinstance(use.get("collapsed"), bool)):
            raise ResultsFileError(f"{p}: expert_use must hold busiest_share (numbers) and collapsed (true/false)")
        collapsed = use["collapsed"]
        text = f"{100 * max(busiest):.0f}%" + (" COLLAPSED" if collapsed else "")
    rr = data.get("router_robustness")
    if isinstance(rr, dict) and rr:
        key = "pgd-50" if "pgd-50" in rr else sorted(rr)[0]
        v = _number(rr, key, p, "router_robustness ")
        # a collapsed router cannot change: its figure measures nothing, and says so
        text += f"; {v:.1f}% ({key})" + {True: " meaningless", None: " unverified"}.get(collapsed, "")
    return text


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
    rows = _paired_tests(rows)
    attacks: list[str] = []
    for r in rows:
        attacks += [a for a in r.robust_acc if a not in attacks]
    return CompareTable(rows, attacks)


def _paired_tests(rows: list[CompareRow]) -> list[CompareRow]:
    """``vs_best`` for every row: the exact McNemar test of its worst-case outcomes against the best
    row's (highest worst case; the first such in input order), where both are paired."""
    if len(rows) < 2:
        return rows
    best = max(rows, key=lambda r: r.worst_case)
    out = []
    for r in rows:
        if r is best:
            text = "best"
        else:
            t = (mcnemar_paired(best.outcomes, best.indices_sha256, r.outcomes, r.indices_sha256)
                 if r.dataset == best.dataset else None)
            text = MISSING if t is None else f"p={t.p_value:.2g}" + ("" if t.significant() else " n.s.")
        out.append(CompareRow(**{**r.__dict__, "vs_best": text}))
    return out


def _renamed(r: CompareRow, name: str) -> CompareRow:
    return CompareRow(**{**r.__dict__, "name": name})


def _with_saving(r: CompareRow, dense_gflops: float | None) -> CompareRow:
    if r.gflops is None or not dense_gflops:
        return r
    return CompareRow(**{**r.__dict__, "saving": 1.0 - r.gflops / dense_gflops})


__all__ = ["CompareRow", "CompareTable", "ResultsFileError", "compare_results", "read_result"]
