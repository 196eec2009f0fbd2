"""AutoAttack's reference run next to our ``standard`` suite with the fast engine (issue 21, item 2).

For one checkpoint and the seeded test subset ``subset_indices(10000, n, 0)``, in one process:

1. **reference**: ``pyautoattack.AutoAttack(version="standard", seed=0).run_standard_evaluation(x, y,
   batch_size=250)``, the authors' code as RobustBench runs it: robust accuracy, per-example outcome,
   wall time.
2. **ours**: ``robustmoe_bench.evaluate(ckpt, suite="standard", autoattack=ENGINE)``: the whole suite
   (clean pass, PGD-50, AutoAttack standard alone on every clean-correct example, batches of 100): its
   ``autoattack`` accuracy and per-example outcome, and the suite's wall time.

The row gives both accuracies, their difference, the share of examples whose outcome agrees, and
ours / reference wall time. Run with ``--engine reference`` too to see the suite's own overhead.

    .venv/bin/python benchmarks/autoattack_engines.py model_zoo/fmnist-at-dense.safetensors --n 500 --threads 1

Rows are appended to ``results/autoattack_engines.jsonl``; ``results/autoattack_engines.md`` is rewritten
from all rows.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from cells import machine

from robustmoe_bench import load_checkpoint
from robustmoe_bench.data import as_tensors, load_dataset, subset_indices
from robustmoe_bench.evaluation import evaluate


def reference(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, float]:
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").propagate = False
    aa = AutoAttack(model, norm="Linf", eps=eps, seed=0, version="standard", device=x.device)
    aa.verbose = False
    t0 = time.perf_counter()
    with torch.random.fork_rng():
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=250)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        robust = model(x_adv).argmax(1).eq(y) & model(x).argmax(1).eq(y)
    return robust, seconds


def write_markdown(rows: list[dict[str, Any]], out: Path) -> None:
    lines = [
        "# AutoAttack: reference run vs our `standard` suite",
        "",
        "Written by `benchmarks/autoattack_engines.py` (see its docstring); one row per run. Same examples "
        "(`subset_indices(10000, n, 0)`), same process, Linf eps 0.1. *reference*: pyautoattack's "
        "`run_standard_evaluation` (batch 250). *ours*: `evaluate(suite=\"standard\", autoattack=ENGINE)`, "
        "the whole suite (clean pass, PGD-50, AutoAttack alone), batches of 100.",
        "",
        "| model | n | threads | engine | AA reference % | AA ours % | diff (points) | outcomes agree | "
        "reference s | ours s | ours / reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['n']} | {r['threads']} | {r['engine']} | {r['aa_reference']:.2f} | "
            f"{r['aa_ours']:.2f} | {r['aa_ours'] - r['aa_reference']:+.2f} | {100 * r['agreement']:.1f} % | "
            f"{r['seconds_reference']:.0f} | {r['seconds_ours']:.0f} | {r['seconds_ours'] / r['seconds_reference']:.2f} |")
    lines += ["", f"Machine: {rows[-1]['machine']}." if rows else ""]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engine", default="fast", choices=("fast", "reference", "both"),
                    help="our suite's AutoAttack engine; both: one row each, same process, after one reference run")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.ckpt)
    model = ckpt.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    eps = 0.1
    test = load_dataset("fashion-mnist", "test")
    idx = subset_indices(len(test), args.n, 0)
    x, y = as_tensors(test, idx)
    ref_robust, ref_s = reference(model, x, y, eps)
    rows_new = []
    for engine in (("fast", "reference") if args.engine == "both" else (args.engine,)):
        t0 = time.perf_counter()
        res = evaluate(args.ckpt, suite="standard", n_examples=args.n, eps=eps, seed=0, progress=False,
                       autoattack=engine)
        ours_s = time.perf_counter() - t0
        # the suite evaluated the same examples as the reference run, in the same order
        assert res.examples is not None
        assert res.examples["indices_sha256"] == hashlib.sha256(idx.numpy().tobytes()).hexdigest()
        ours = torch.tensor([c == "1" for c in res.examples["autoattack"]])
        row = {
            "model": Path(args.ckpt).stem, "n": args.n, "threads": args.threads, "engine": engine,
            "aa_reference": 100 * float(ref_robust.float().mean()), "aa_ours": 100 * float(ours.float().mean()),
            "agreement": float(ours.eq(ref_robust).float().mean()),
            "seconds_reference": round(ref_s, 1), "seconds_ours": round(ours_s, 1),
            "seconds_ours_autoattack": round(sum(a.seconds for a in res.attacks if a.name == "autoattack"), 1),
            "machine": machine(),
        }
        print(json.dumps(row), flush=True)
        rows_new.append(row)
    out = Path(args.results)
    with open(out / "autoattack_engines.jsonl", "a") as f:
        for row in rows_new:
            f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in open(out / "autoattack_engines.jsonl")]
    write_markdown(rows, out / "autoattack_engines.md")


if __name__ == "__main__":
    main()
