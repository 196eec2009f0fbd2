"""Why robust accuracy swings between epochs and seeds: the TRADES inner attack, side by side.

Each cell trains one method at a preset with one inner-attack setting (``train_steps``, the step size
as a multiple of eps over the steps, the start) and a seed, and records the per-epoch validation clean
and PGD-10 accuracy (the validation split of the *training* set, never test examples) and the wall time.
The question (issue 20, item 3): does a 2-step inner attack from ``x + 0.001 N(0, 1)`` -- close to a
single-step attack, known to overfit catastrophically at large eps -- make validation PGD-10 swing by
10-20 points between epochs at steady clean accuracy, and do more steps stop it?

Cells run in ``--jobs`` processes (one torch thread each) and are appended to ``<out>.jsonl`` as they
finish (an interrupted run resumes); ``<out>.md`` is rewritten from all rows at the end.

    .venv/bin/python benchmarks/trades_stability.py --preset fmnist-mini --methods at-dense \\
        --variants steps-2,steps-5,steps-10 --seeds 0,1,2 --jobs 2
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cells import cell_arguments, choose, command_line, mean_std, run_cells, write_text

#: name -> TrainConfig overrides; ``step_mult``: the step size is step_mult * eps / train_steps
#: (2.5 eps over the steps, Madry et al.'s rule), None: the config's default (0.625 eps, the public code's)
VARIANTS: dict[str, dict[str, Any]] = {
    "steps-2": dict(train_steps=2),  # the presets' setting today
    "steps-2-uniform": dict(train_steps=2, trades_start="uniform"),
    "steps-5": dict(train_steps=5, step_mult=2.5),
    "steps-10": dict(train_steps=10, step_mult=2.5),
    # half the peak learning rate, and the run outputs the moving average of its weights (--ema); the
    # last iterate of the same run is recorded too (``raw_*``), so one run measures both
    "steps-5-lr-0.05-ema": dict(train_steps=5, step_mult=2.5, lr=0.05, ema=0.999),
    # at-sparse only: the same, with two finetune epochs (phases 2 + 1 + 2) so the last two epochs are one phase
    "steps-5-lr-0.05-ema-ft2": dict(train_steps=5, step_mult=2.5, lr=0.05, ema=0.999, phase_epochs=[2, 1, 2]),
}


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from robustmoe_bench.training import TrainConfig, train

    over = dict(VARIANTS[cell["variant"]])
    mult = over.pop("step_mult", None)
    kw: dict[str, Any] = dict(method=cell["method"], seed=cell["seed"], device="cpu", data_root=cell.get("data_root"),
                              **over)
    cfg = TrainConfig.from_preset(cell["preset"], **kw)
    if mult is not None:
        cfg = TrainConfig.from_preset(cell["preset"], **kw, step_size=mult * float(cfg.eps) / cfg.train_steps)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train(cfg, Path(tmp) / "run", progress=False)
        secs = time.perf_counter() - t0
    raw = {}
    if cfg.ema is not None:  # the last iterate of the same run
        raw = dict(raw_clean_by_epoch=[h["raw_clean_acc"] for h in res.history],
                   raw_pgd10_by_epoch=[h["raw_pgd10_acc"] for h in res.history])
    return dict(cell, **raw, lr=cfg.lr, ema=cfg.ema, eps=float(cfg.eps), train_steps=cfg.train_steps, step_size=cfg.step_size, trades_start=cfg.trades_start,
                clean_by_epoch=[h["clean_acc"] for h in res.history], pgd10_by_epoch=[h["pgd10_acc"] for h in res.history],
                n_val=cfg.holdout, seconds=round(secs, 1))


def write_markdown(rows: list[dict[str, Any]], out: Path, command: str) -> str:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["preset"], r["method"], r["variant"]), []).append(r)
        if "raw_pgd10_by_epoch" in r:  # the same runs' last iterate, as a row of its own
            groups.setdefault((r["preset"], r["method"], r["variant"] + " (last iterate)"), []).append(
                dict(r, clean_by_epoch=r["raw_clean_by_epoch"], pgd10_by_epoch=r["raw_pgd10_by_epoch"]))
    lines = ["# TRADES inner attack and the stability of robust training (validation split)", "", f"`{command}`", "",
             "Validation split of the training set (never test data). *largest epoch-to-epoch PGD-10 swing*: the "
             "largest |change| of validation PGD-10 between consecutive epochs of a run (mean over seeds); "
             "*last-2 gap*: |PGD-10 of the last epoch - the one before|; *seed std*: sample std of the last "
             "epoch's PGD-10 over seeds. Targets (issue 20): last-2 gap <= 3 points in every run.", "",
             "| preset | method | variant | steps | step / eps | seeds | val clean (%) | val PGD-10 (%) | seed std (pts) "
             "| largest swing (pts) | last-2 gap (pts), per seed | PGD-10 per epoch, per seed | s/run |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for (preset, method, variant), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        last = [r["pgd10_by_epoch"][-1] for r in rs]
        swings = [max((abs(a - b) for a, b in zip(r["pgd10_by_epoch"], r["pgd10_by_epoch"][1:])), default=0.0) for r in rs]
        gaps = [abs(r["pgd10_by_epoch"][-1] - r["pgd10_by_epoch"][-2]) for r in rs if len(r["pgd10_by_epoch"]) >= 2]
        sd = f"{statistics.stdev(last):.1f}" if len(last) > 1 else "-"
        per = "; ".join("/".join(f"{v:.0f}" for v in r["pgd10_by_epoch"]) for r in rs)
        lines.append(f"| {preset} | {method} | {variant} | {rs[0]['train_steps']} | {rs[0]['step_size'] / rs[0]['eps']:.3g} "
                     f"| {len(rs)} | {mean_std([r['clean_by_epoch'][-1] for r in rs])} | {mean_std(last)} | {sd} | "
                     f"{mean_std(swings)} | {', '.join(f'{g:.1f}' for g in gaps)} | {per} | "
                     f"{statistics.fmean(r['seconds'] for r in rs):.0f} |")
    return write_text(out, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cell_arguments(ap, "trades_stability", "at-dense")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    variants = choose(args.variants, VARIANTS, "variant")
    out = Path(args.out)
    key = ("preset", "method", "variant", "seed")
    cells = [dict(preset=args.preset, method=m, variant=v, seed=int(s), data_root=args.data_root)
             for m in args.methods.split(",") for v in variants for s in args.seeds.split(",")]
    rows = run_cells(out, key, cells, run_cell, args.jobs)
    command = command_line("trades_stability.py", out)
    print(write_markdown(rows, out, command))


if __name__ == "__main__":
    main()
