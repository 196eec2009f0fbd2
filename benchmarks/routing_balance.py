"""Why the channel-family MoE collapses, and which fix keeps its experts in use: candidates side by side.

Each cell trains one method (``std``, ``at-moe``, ``advmoe``) at a preset with one routing candidate
(a balancing term of the gates, or none) and a seed, then measures on the validation split of the
*training* set (never on test examples):

* expert use per MoE layer (busiest expert's share, normalised entropy, collapse flag);
* forced-expert prediction change: the share of predictions that change when each input is forced
  onto another expert (does the routing matter?);
* validation clean and PGD-10 accuracy of the last epoch (the training monitor).

Cells run in ``--jobs`` processes (one torch thread each) and are appended to ``<out>.jsonl`` as they
finish, so an interrupted run resumes; ``<out>.md`` is rewritten from all rows at the end.

    .venv/bin/python benchmarks/routing_balance.py --preset fmnist-mini --methods at-moe,std \\
        --candidates none,switch-0.5,entropy-0.5,cv2-0.5 --seeds 0,1,2 --jobs 2
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cells import cell_arguments, choose, command_line, mean_std, run_cells, write_text

#: name -> TrainConfig overrides of the routing candidate
_OFF = dict(balance="none", balance_weight=0.0, router_z=0.0, router_lr=1.0)
CANDIDATES: dict[str, dict[str, Any]] = {
    "none": dict(_OFF),
    "switch-0.1": dict(_OFF, balance="switch", balance_weight=0.1),
    "switch-0.5": dict(_OFF, balance="switch", balance_weight=0.5),
    "switch-2": dict(_OFF, balance="switch", balance_weight=2.0),
    "entropy-0.5": dict(_OFF, balance="entropy", balance_weight=0.5),
    "cv2-0.5": dict(_OFF, balance="cv2", balance_weight=0.5),
    "switch-0.5+z-0.001": dict(_OFF, balance="switch", balance_weight=0.5, router_z=0.001),
    "router-lr-0.1": dict(_OFF, router_lr=0.1),
    "switch-0.5+router-lr-0.1": dict(_OFF, balance="switch", balance_weight=0.5, router_lr=0.1),
    "entropy-0.5+router-lr-0.1": dict(_OFF, balance="entropy", balance_weight=0.5, router_lr=0.1),
    "switch-0.5+router-lr-0.01": dict(_OFF, balance="switch", balance_weight=0.5, router_lr=0.01),
    "router-lr-0.01": dict(_OFF, router_lr=0.01),
    "switch-0.1+router-lr-0.1": dict(_OFF, balance="switch", balance_weight=0.1, router_lr=0.1),
    "switch-0.1+router-lr-0.01": dict(_OFF, balance="switch", balance_weight=0.1, router_lr=0.01),
    "switch-0.5+router-lr-0.001": dict(_OFF, balance="switch", balance_weight=0.5, router_lr=0.001),
    "switch-2+router-lr-0.01": dict(_OFF, balance="switch", balance_weight=2.0, router_lr=0.01),
}
#: targets of the routing issue: busiest share at N = 2 / N = 4, forced change
TARGET_BUSIEST = {2: 0.75, 4: 0.50}
TARGET_FORCED = 0.10


#: the width-matched references (no routing): S-Dense trained with plain cross-entropy and with TRADES,
#: and the routed methods each is compared with
REFERENCES = {"std-sdense": ("std",), "at-sdense": ("at-moe", "advmoe")}


def _routed(method: str) -> bool:
    return method not in REFERENCES


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from robustmoe_bench.adapters.expert_use import expert_use_of, forced_change_rate
    from robustmoe_bench.checkpoint import load_checkpoint
    from robustmoe_bench.training import TrainConfig, train
    from robustmoe_bench.training.loop import validation_examples

    over = dict(CANDIDATES[cell["candidate"]]) if _routed(cell["method"]) else {}
    method = "std" if cell["method"].startswith("std") else cell["method"]
    kw: dict[str, Any] = dict(method=method, seed=cell["seed"], device="cpu", data_root=cell.get("data_root"))
    if cell["method"] == "std-sdense":
        kw["kind"] = "sdense"
    elif _routed(cell["method"]):
        if method == "std":
            kw["kind"] = "moe"
        kw["experts"] = cell["experts"]
        kw.update(over)
    cfg = TrainConfig.from_preset(cell["preset"], **kw)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train(cfg, Path(tmp) / "run", progress=False)
        secs = time.perf_counter() - t0
        model = load_checkpoint(res.ckpt).model.eval()
        hx, _ = validation_examples(cfg)
        use = expert_use_of(model, hx)
        forced = forced_change_rate(model, hx)
    per_epoch = [h.get("expert_use", {}).get("busiest_share") for h in res.history]
    return dict(cell, val_clean_acc=res.final_clean_acc, val_pgd10_acc=res.final_pgd10_acc,
                val_pgd10_by_epoch=[h["pgd10_acc"] for h in res.history], n_val=int(hx.shape[0]),
                busiest_share=use.busiest_share if use else None,
                entropy_normalised=use.entropy_normalised if use else None,
                collapsed=use.collapsed if use else None, busiest_by_epoch=per_epoch,
                forced_change=forced, seconds=round(secs, 1))


def write_markdown(rows: list[dict[str, Any]], out: Path, command: str) -> str:
    # each routed method's clean accuracy against its width-matched reference of the same seed
    ref = {(r["preset"], m, r["seed"]): r["val_clean_acc"] for r in rows if r["method"] in REFERENCES
           for m in REFERENCES[r["method"]]}
    refs = [r for r in rows if r["method"] in REFERENCES]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["method"] in REFERENCES:
            continue
        groups.setdefault((r["preset"], r["method"], r["experts"], r["candidate"]), []).append(r)
    lines = ["# Routing of the channel-family MoE: balancing candidates on the validation split", "",
             f"`{command}`", "",
             "Validation split of the training set (never test data). *busiest*: the busiest expert's share of "
             "the validation inputs, highest over the MoE layers (balanced: 1/N); *forced change*: predictions "
             "changed when every input is forced onto another expert; *vs S-Dense*: clean accuracy minus that of "
             "S-Dense trained the same way and seed (`std --kind sdense` for std, `at-sdense` for at-moe and advmoe); mean ± "
             "std over seeds. Targets: busiest ≤ 75 % (N = 2) / ≤ 50 % (N = 4), forced change ≥ 10 %, std clean "
             "within 3 points of S-Dense.", "",
             "| preset | method | N | candidate | seeds | busiest (%) | collapsed | forced change (%) | val clean (%) "
             "| val PGD-10 (%) | last-2-epoch PGD-10 gap (pts) | vs S-Dense clean (pts) | targets | s/run |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for (preset, method, n, cand), rs in sorted(groups.items()):
        busiest = [100 * max(r["busiest_share"]) for r in rs if r["busiest_share"]]
        forced = [100 * r["forced_change"] for r in rs if r["forced_change"] is not None]
        gaps = [abs(r["val_pgd10_by_epoch"][-1] - r["val_pgd10_by_epoch"][-2]) for r in rs
                if len(r["val_pgd10_by_epoch"]) >= 2]
        vs = [r["val_clean_acc"] - ref[(preset, method, r["seed"])] for r in rs if (preset, method, r["seed"]) in ref]
        ok = (all(b <= 100 * TARGET_BUSIEST.get(n, 1.0) for b in busiest) and all(f >= 100 * TARGET_FORCED for f in forced)
              and (method != "std" or bool(vs and all(v >= -3 for v in vs))))
        lines.append(f"| {preset} | {method} | {n} | {cand} | {len(rs)} | {mean_std(busiest)} | "
                     f"{sum(bool(r['collapsed']) for r in rs)}/{len(rs)} | {mean_std(forced)} | "
                     f"{mean_std([r['val_clean_acc'] for r in rs])} | {mean_std([r['val_pgd10_acc'] for r in rs])} | "
                     f"{mean_std(gaps)} | {mean_std(vs) if vs else '-'} | {'met' if ok else 'not met'} | "
                     f"{statistics.fmean(r['seconds'] for r in rs):.0f} |")
    if refs:
        lines += ["", "References without routing (same preset and seeds):", "",
                  "| preset | method | seeds | val clean (%) | val PGD-10 (%) | s/run |", "|---|---|---:|---:|---:|---:|"]
        by: dict[tuple, list[dict[str, Any]]] = {}
        for r in refs:
            by.setdefault((r["preset"], r["method"]), []).append(r)
        for (preset, method), rs in sorted(by.items()):
            lines.append(f"| {preset} | {method} | {len(rs)} | {mean_std([r['val_clean_acc'] for r in rs])} | "
                         f"{mean_std([r['val_pgd10_acc'] for r in rs])} | {statistics.fmean(r['seconds'] for r in rs):.0f} |")
    return write_text(out, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cell_arguments(ap, "routing_balance", "at-moe", "comma-separated: std, at-moe, advmoe, and the references "
                   "std-sdense, at-sdense")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--experts", default="2", help="comma-separated expert counts")
    args = ap.parse_args()
    cands = choose(args.candidates, CANDIDATES, "candidate")
    out = Path(args.out)
    key = ("preset", "method", "experts", "candidate", "seed")
    cells = []
    for method in args.methods.split(","):
        for n in ([0] if not _routed(method) else [int(e) for e in args.experts.split(",")]):
            for cand in (["-"] if not _routed(method) else cands):
                for seed in [int(s) for s in args.seeds.split(",")]:
                    cells.append(dict(preset=args.preset, method=method, experts=n, candidate=cand, seed=seed,
                                      data_root=args.data_root))
    rows = run_cells(out, key, cells, run_cell, args.jobs)
    command = command_line("routing_balance.py", out)
    print(write_markdown(rows, out, command))


if __name__ == "__main__":
    main()
