"""Which MoE design to ship as the default: standard (cross-entropy) training of every model kind and MoE
design on one preset, scored on the validation split of the *training* set (never on test examples).

The paper's Fig. 1b trains every model type with cross-entropy: a correct MoE-CNN is not far below
S-Dense there. This script trains ``std`` for Dense, S-Dense and each MoE design (expert layout x router),
same seed and data, and writes ``benchmarks/results/moe_design.{json,md}``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/moe_design.py --preset fmnist-mini
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from robustmoe_bench.training import TrainConfig, train

DESIGNS = {
    "dense": dict(kind="dense"),
    "sdense": dict(kind="sdense"),
    "moe compact+resnet (public code)": dict(kind="moe", layout="compact", router="resnet"),
    "moe compact+shared": dict(kind="moe", layout="compact", router="shared"),
    "moe compact+shared softmax-STE": dict(kind="moe", layout="compact", router="shared", ste="softmax"),
    "moe compact+layer": dict(kind="moe", layout="compact", router="layer"),  # softmax STE (its default)
    "moe compact+layer identity-STE": dict(kind="moe", layout="compact", router="layer", ste="identity"),
    "moe slice+layer (before)": dict(kind="moe", layout="slice", router="layer", ste="softmax"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fmnist-mini")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated names of DESIGNS")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "moe_design"))
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    names = [d for d in args.designs.split(",") if d]
    unknown = [d for d in names if d not in DESIGNS]
    if unknown:
        raise SystemExit(f"unknown design(s): {', '.join(unknown)}; known: {', '.join(DESIGNS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in names:
                cfg = TrainConfig.from_preset(args.preset, method="std", seed=seed, data_root=args.data_root,
                                              device="cpu", **DESIGNS[name])
                t0 = time.perf_counter()
                res = train(cfg, Path(tmp) / f"{seed}-{len(rows)}", progress=False)
                row = dict(design=name, seed=seed, **DESIGNS[name], val_clean_acc=res.final_clean_acc,
                           n_val=res.history[-1]["holdout"], seconds=round(time.perf_counter() - t0, 1))
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = dict(preset=args.preset, command="OMP_NUM_THREADS=%s python benchmarks/moe_design.py --preset %s --seeds %s"
                % (os.environ.get("OMP_NUM_THREADS", "?"), args.preset, args.seeds),
                torch=torch.__version__, machine=platform.machine(), threads=torch.get_num_threads())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r["design"], []).append(r["val_clean_acc"])
    ref = sum(by.get("sdense", [float("nan")])) / max(1, len(by.get("sdense", [])))
    lines = [f"# MoE design: standard training on `{args.preset}`, validation split of the training set", "",
             f"`{meta['command']}` ({len(rows)} runs; validation n = {rows[0]['n_val']})", "",
             "| design | val. clean acc (%) | vs S-Dense (pts) | s/run |", "|---|---:|---:|---:|"]
    for name, accs in by.items():
        m = sum(accs) / len(accs)
        secs = [r["seconds"] for r in rows if r["design"] == name]
        lines.append(f"| {name} | {m:.1f} | {m - ref:+.1f} | {sum(secs) / len(secs):.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
