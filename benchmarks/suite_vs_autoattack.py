"""Benchmark: wall time and robust accuracy of our ``full`` suite vs AutoAttack standard alone.

Same model, same examples, one process, runs interleaved (AA, full, AA, full, ...) so both see the
same load on a shared CPU. AutoAttack is run directly through ``pyautoattack`` (standard version), as
a user would. Targets: full-suite wall time <= 1.5x AutoAttack's, and full's worst case <= AutoAttack's
robust accuracy.

The model: ``--ckpt`` or, by default, a resnet-mini MoE (2 experts, layer routers) trained here briefly
with PGD adversarial training on Fashion-MNIST (Debian's ``dataset-fashion-mnist``).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/suite_vs_autoattack.py --n-examples 32 --train-steps 200
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robustmoe_bench import create_model, load_checkpoint, save_checkpoint
from robustmoe_bench.attacks import create_attack
from robustmoe_bench.data import as_tensors, load_dataset, subset_indices
from robustmoe_bench.evaluation import evaluate


def train_quick(steps: int, eps: float, seed: int) -> torch.nn.Module:
    """PGD-3 adversarial training (50/50 clean/adversarial CE), Adam, batch 64: a minute-scale model."""
    torch.manual_seed(seed)
    train = load_dataset("fashion-mnist", "train")
    model = create_model("resnet-mini", kind="moe", experts=2, scale=0.5, router="layer", dataset="fashion-mnist")
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x, y = as_tensors(train, torch.randint(0, len(train), (64,), generator=g))
        x_adv = create_attack("pgd", eps, steps=3, seed=step, early_stop=False)(model, x, y)
        model.train()
        loss = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_adv), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"train step {step}: loss {loss.item():.3f}", flush=True)
    return model.eval()


def run_autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int) -> tuple[float, float]:
    """(robust accuracy %, seconds) of pyautoattack's standard AutoAttack on (x, y)."""
    from pyautoattack import AutoAttack

    t0 = time.perf_counter()
    aa = AutoAttack(model, version="standard", eps=eps, norm="Linf", seed=seed, device="cpu")
    aa.verbose = False
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=250)
    with torch.no_grad():
        acc = 100.0 * float((model(x_adv).argmax(1) == y).float().mean())
    return acc, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=None)
    ap.add_argument("--save-ckpt", type=Path, default=Path("/tmp/suite_vs_autoattack.safetensors"))
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--n-examples", type=int, default=32)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    args = ap.parse_args()

    if args.ckpt is not None:
        model = load_checkpoint(args.ckpt).model
    else:
        model = train_quick(args.train_steps, args.eps, args.seed)
        save_checkpoint(args.save_ckpt, model, training={"method": "bench-pgd3-at", "steps": args.train_steps})
        print(f"checkpoint saved to {args.save_ckpt}")
    test = load_dataset("fashion-mnist", "test")
    idx = subset_indices(len(test), args.n_examples, args.seed)  # the same subset evaluate() draws
    x, y = as_tensors(test, idx)
    rows = []
    for r in range(args.repeats):
        order = ("aa", "full") if r % 2 == 0 else ("full", "aa")
        for which in order:
            if which == "aa":
                acc, sec = run_autoattack(model, x, y, args.eps, args.seed)
                rows.append({"run": "autoattack-standard (pyautoattack)", "robust_acc": acc, "seconds": sec})
            else:
                t0 = time.perf_counter()
                res = evaluate(model, suite="full", n_examples=args.n_examples, eps=args.eps,
                               batch_size=args.n_examples, seed=args.seed, progress=False)
                sec = time.perf_counter() - t0
                rows.append({"run": "full suite (ours)", "robust_acc": res.worst_case, "seconds": sec,
                             "clean_acc": res.clean_acc, "per_attack": res.robust_acc,
                             "attack_seconds": {a.name: a.seconds for a in res.attacks},
                             "flags": {k: v["passed"] for k, v in res.flags.items()}})
            print(json.dumps(rows[-1]), flush=True)
    aa = [r for r in rows if r["run"].startswith("autoattack")]
    full = [r for r in rows if r["run"].startswith("full")]
    ratio = sum(r["seconds"] for r in full) / sum(r["seconds"] for r in aa)
    summary = {"n_examples": args.n_examples, "eps": args.eps, "time_ratio_full_over_aa": round(ratio, 3),
               "aa_robust_acc": aa[0]["robust_acc"], "full_worst_case": full[0]["robust_acc"],
               "time_target_met": ratio <= 1.5, "accuracy_target_met": full[0]["robust_acc"] <= aa[0]["robust_acc"]}
    print(json.dumps(summary))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
