"""What the cell benchmarks share (``routing_balance.py``, ``trades_stability.py``; :func:`machine` also the
AutoAttack benchmarks): run independent
training cells on worker processes, append each finished row to ``<out>.jsonl`` (an interrupted run
resumes: cells whose key is there already are skipped), and format mean ± std over seeds."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable


def run_cells(out: Path, key: tuple[str, ...], cells: list[dict[str, Any]],
              run_cell: Callable[[dict[str, Any]], dict[str, Any]], jobs: int) -> list[dict[str, Any]]:
    """Every row of ``<out>.jsonl`` plus those of the ``cells`` not yet in it (run on ``jobs`` processes;
    a cell's ``data_root`` is not stored)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    done = {tuple(r[k] for k in key) for r in rows}
    todo = [c for c in cells if tuple(c[k] for k in key) not in done]
    print(f"{len(todo)} cells to run ({len(rows)} done)", flush=True)
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for row in pool.map(run_cell, todo):
            row.pop("data_root", None)
            rows.append(row)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    return rows


def machine() -> str:
    """The machine a row was measured on: processor, cores, torch version."""
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def command_line(script: str, out: Path) -> str:
    """How the rows were made, for the Markdown header."""
    import torch

    return (f"python benchmarks/{script} (rows of every invocation in {out.with_suffix('.jsonl').name}; torch "
            f"{torch.__version__}, {platform.machine()}, 1 thread per cell, {os.cpu_count()} cores)")


def cell_arguments(ap: argparse.ArgumentParser, name: str, methods: str, methods_help: str = "") -> None:
    """The options every cell benchmark takes: --preset, --methods, --seeds, --jobs, --out (default
    ``results/<name>``), --data-root."""
    ap.add_argument("--preset", default="fmnist-mini")
    ap.add_argument("--methods", default=methods, help=methods_help or "comma-separated training methods")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / name))
    ap.add_argument("--data-root", default=None)


def choose(csv: str, known: dict[str, Any], what: str) -> list[str]:
    """The comma-separated names of ``csv``; an unknown one stops the script with one line."""
    names = [c for c in csv.split(",") if c]
    bad = [c for c in names if c not in known]
    if bad:
        raise SystemExit(f"unknown {what}(s): {', '.join(bad)}; known: {', '.join(known)}")
    return names


def write_text(out: Path, lines: list[str]) -> str:
    """Write ``lines`` as ``<out>.md`` and return the text."""
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    return text


def mean_std(xs: list[float]) -> str:
    """``mean ± std`` (sample std) with one decimal, the value alone for one, ``-`` for none."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.fmean(xs):.1f} ± {statistics.stdev(xs):.1f}"
