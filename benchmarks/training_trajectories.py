"""Validation trajectories of finished training runs, grouped by the settings that differ between them.

For each run folder (``train``'s output; only ``config.json`` and ``metrics.jsonl`` are read; the monitor's numbers are on
the validation split of the *training* set, never on test examples): the per-epoch validation PGD-10 of the
model the run outputs, the final clean and PGD-10 accuracy, and the gap between the last two epochs (the
routing issue's target: <= 3 points). Runs are grouped by the config fields that differ between them
(seed and ``from_dense`` aside), and each group gets mean ± sample std over its seeds.

Written to choose at-sparse's finetune learning rate (``--finetune-lr``) for the reproduce preset:

    .venv/bin/python benchmarks/training_trajectories.py RUN [RUN ...] --out results/X.md
"""
from __future__ import annotations

import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from routing_health import parse_run_folders

#: fields that identify a run without defining a setting to compare
_NOT_A_SETTING = ("seed", "from_dense", "data_root", "device", "workers")
TARGET_GAP = 3.0


def read_run(run: Path) -> dict[str, Any]:
    cfg = json.loads((run / "config.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if len(rows) < 2:
        raise SystemExit(f"error: {run} has fewer than two epochs in metrics.jsonl")
    pgd = [float(r["pgd10_acc"]) for r in rows]
    return {"run": str(run), "cfg": cfg, "seed": cfg.get("seed"), "phases": [r.get("phase", "") for r in rows],
            "pgd": pgd, "clean": float(rows[-1]["clean_acc"]), "final": pgd[-1], "gap": abs(pgd[-1] - pgd[-2]),
            "seconds": sum(float(r.get("cpu_seconds", r.get("seconds", 0.0))) for r in rows)}


def _label(cfg: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={cfg.get(k)}" for k in keys) or "all"


def _ms(v: list[float]) -> str:
    return f"{v[0]:.1f}" if len(v) == 1 else f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}"


def main(argv: list[str] | None = None) -> int:
    a = parse_run_folders(argv, __doc__.splitlines()[0], needs=("config.json", "metrics.jsonl"))
    if a is None:
        return 2
    runs = [read_run(r) for r in a.runs]
    fields = sorted({k for r in runs for k in r["cfg"]} - set(_NOT_A_SETTING))
    keys = [k for k in fields if len({json.dumps(r["cfg"].get(k)) for r in runs}) > 1]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(_label(r["cfg"], keys), []).append(r)
    cmd = shlex.join(argv if argv is not None else sys.argv[1:])
    lines = ["# Validation trajectories of training runs", "",
             f"`.venv/bin/python benchmarks/training_trajectories.py {cmd}`", "",
             "Validation split of the training set (the training monitor's examples; never test data). PGD-10 of the "
             "model each run outputs, per epoch; *last-2 gap*: |last epoch - the one before| (target <= 3 points). "
             "Groups: the settings that differ between the runs; mean ± sample std over seeds.", "",
             "| setting | seeds | val clean (%) | final val PGD-10 per seed (%) | mean ± std | last-2 gaps (pts) | "
             "all gaps <= 3 | CPU s/run |",
             "|---|---:|---:|---|---:|---|---|---:|"]
    for label, rs in groups.items():
        rs.sort(key=lambda r: r["seed"])
        finals = " / ".join("%.1f" % r["final"] for r in rs)
        gaps = ", ".join("%.1f" % r["gap"] for r in rs)
        met = "yes" if all(r["gap"] <= TARGET_GAP for r in rs) else "no"
        lines.append(f"| {label} | {len(rs)} | {_ms([r['clean'] for r in rs])} | {finals} | "
                     f"{_ms([r['final'] for r in rs])} | {gaps} | {met} | "
                     f"{statistics.mean(r['seconds'] for r in rs):.0f} |")
    lines += ["", "Per run (validation PGD-10 per epoch, phase in brackets):", "",
              "| run | seed | setting | PGD-10 per epoch (%) |", "|---|---:|---|---|"]
    for label, rs in groups.items():
        for r in rs:
            traj = " / ".join(f"{p:.1f}" + (f" [{ph}]" if ph and ph != "train" else "")
                              for p, ph in zip(r["pgd"], r["phases"]))
            lines.append(f"| {r['run']} | {r['seed']} | {label} | {traj} |")
    text = "\n".join(lines) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(a.out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(a.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
