"""Benchmark: our PGD-50 vs torchattacks.PGD(steps=50), same model, same examples, one process.

Speed (examples/second) and robust accuracy of both, repetitions interleaved (the order alternates
each repetition so neither side always runs on a warmer or quieter machine), medians reported. Our
PGD runs with its default per-example early stopping; ``--no-early-stop`` adds our PGD without it,
to show where the speed-up comes from.

The model: a checkpoint (``--ckpt``), or a ``resnet-mini`` MoE trained here for a few minutes on
Fashion-MNIST with PGD-2 adversarial training (so that robust accuracy is neither 0 nor 100 %).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pgd_vs_torchattacks.py --n 200 --reps 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torchattacks  # noqa: E402

from robustmoe_bench.attacks import create_attack  # noqa: E402
from robustmoe_bench.data import as_tensors, load_dataset, subset_indices  # noqa: E402
from robustmoe_bench.models import create_model  # noqa: E402


def train_quick(arch: str, kind: str, eps: float, n_train: int, epochs: int, seed: int) -> torch.nn.Module:
    """PGD-2 adversarial training (cross-entropy on adversarial inputs), SGD with cosine lr."""
    torch.manual_seed(seed)
    model = create_model(arch, kind=kind, dataset="fashion-mnist")
    x, y = as_tensors(load_dataset("fashion-mnist", "train"), subset_indices(60000, n_train, seed))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = epochs * (n_train // 128)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    attack = create_attack("pgd", eps, steps=2, step_size=eps, early_stop=False)
    for epoch in range(epochs):
        perm = torch.randperm(n_train)
        for i in range(n_train // 128):
            idx = perm[i * 128:(i + 1) * 128]
            xb = attack(model, x[idx], y[idx])  # restores train mode afterwards
            model.train()
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"  epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}", flush=True)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=None, help="robustmoe-bench checkpoint to attack")
    ap.add_argument("--arch", default="resnet-mini")
    ap.add_argument("--kind", default="moe")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--n", type=int, default=200, help="test examples attacked")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--no-early-stop", action="store_true", help="also time our PGD without early stopping")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.ckpt is not None:
        from robustmoe_bench.checkpoint import load_checkpoint

        model = load_checkpoint(args.ckpt).model
    else:
        print(f"training {args.arch} {args.kind} (PGD-2 AT, {args.n_train} examples, {args.epochs} epochs)")
        model = train_quick(args.arch, args.kind, args.eps, args.n_train, args.epochs, args.seed)
    model.eval()
    x, y = as_tensors(load_dataset("fashion-mnist", "test"), subset_indices(10000, args.n, args.seed + 1))
    alpha = 2.5 * args.eps / args.steps

    def ours(early_stop: bool):
        atk = create_attack("pgd", args.eps, steps=args.steps, step_size=alpha, early_stop=early_stop,
                            seed=args.seed)
        return lambda xb, yb: atk(model, xb, yb)

    ta = torchattacks.PGD(model, eps=args.eps, alpha=alpha, steps=args.steps, random_start=True)

    def theirs(xb, yb):
        return ta(xb, yb)

    contenders = {"ours (early_stop=True)": ours(True), "torchattacks.PGD": theirs}
    if args.no_early_stop:
        contenders["ours (early_stop=False)"] = ours(False)
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    accs: dict[str, list[float]] = {k: [] for k in contenders}
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean()) * 100
    names = list(contenders)
    for rep in range(args.reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            torch.manual_seed(args.seed + rep)  # torchattacks draws its random start from the global RNG
            t0 = time.perf_counter()
            correct = 0
            for i in range(0, args.n, args.batch):
                xb, yb = x[i:i + args.batch], y[i:i + args.batch]
                xa = contenders[name](xb, yb)
                with torch.no_grad():
                    correct += int((model(xa).argmax(1) == yb).sum())
            dt = time.perf_counter() - t0
            rates[name].append(args.n / dt)
            accs[name].append(100.0 * correct / args.n)
            print(f"  rep {rep + 1}: {name:26s} {args.n / dt:7.1f} ex/s  robust acc {100.0 * correct / args.n:5.1f} %",
                  flush=True)

    ref = statistics.median(rates["torchattacks.PGD"])
    print(f"\nmodel: {getattr(model, 'spec', None) and model.spec.describe()}, eps={args.eps}, "
          f"PGD-{args.steps}, alpha={alpha:g}, n={args.n}, clean acc {clean:.1f} %, {torch.get_num_threads()} thread(s)")
    print("| attack | examples/s (median) | speed-up | robust acc % (median) |")
    print("|---|---|---|---|")
    for name in names:
        r = statistics.median(rates[name])
        print(f"| {name} | {r:.1f} | {r / ref:.2f}x | {statistics.median(accs[name]):.1f} |")


if __name__ == "__main__":
    main()
