"""Per-iteration time of at-moe and advmoe training: ours vs the naive reference, interleaved in one process.

* ours:  sparse MoE execution (only the chosen expert computed), TRADES attack with input-only gradients
         (``torch.autograd.grad`` w.r.t. the input), AdvMoE group steps that form only the updated
         group's gradients — the real training code (:func:`robustmoe_bench.training.methods.trades_step`).
* naive: the behaviour of the paper's public code, reproduced from its description: masked MoE layers
         (every expert computed, then masked) and an attack loop that calls ``loss.backward()`` at each
         PGD step, so every parameter gradient is formed and thrown away; the AdvMoE group steps
         backpropagate into all parameters and then step one group.

Both variants share model weights at the start, the batch and the hyper-parameters (TRADES, K=2, beta 6,
SGD momentum 0.9). Variants alternate within each round so machine-load drift hits both alike; the
median over rounds is reported.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_step.py --rounds 5 --warmup 1
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from robustmoe_bench.models import create_model
from robustmoe_bench.training import TrainConfig, get_method
from robustmoe_bench.training.methods import StepContext, trades_step
from robustmoe_bench.training.trades import trades_loss


def naive_pgd_kl(model: torch.nn.Module, x: torch.Tensor, eps: float, steps: int, step: float,
                 g: torch.Generator) -> torch.Tensor:
    """TRADES inner PGD as the paper's code does it: ``loss.backward()`` each step (parameter grads too)."""
    model.eval()
    with torch.no_grad():
        p = F.softmax(model(x), 1)
    xa = (x + (2 * torch.rand(x.shape, generator=g) - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        model.zero_grad(set_to_none=False)
        F.kl_div(F.log_softmax(model(xa), 1), p, reduction="batchmean").backward()
        with torch.no_grad():
            xa = torch.min(torch.max(xa + step * xa.grad.sign(), x - eps), x + eps).clamp(0, 1)
    model.train()
    return xa.detach()


def naive_trades_step(ctx: StepContext, batch, group: int | None) -> None:
    cfg = ctx.config
    x, y = batch
    xa = naive_pgd_kl(ctx.net, x, cfg.eps, cfg.train_steps, cfg.step_size, ctx.generator)
    out = trades_loss(ctx.net, x, y, xa, cfg.beta)
    ctx.optimizer.zero_grad(set_to_none=True)
    out.total.backward()  # every parameter's gradient, even for a one-group AdvMoE step
    if group is not None:
        for i, pg in enumerate(ctx.optimizer.param_groups):
            if i != group:
                for p in pg["params"]:
                    p.grad = None
    ctx.optimizer.step()


def make(variant: str, method: str, base: torch.nn.Module, cfg: TrainConfig) -> Callable[[list], None]:
    net = copy.deepcopy(base)
    net.execution = "sparse" if variant == "ours" else "masked"
    net.train()
    groups = get_method(method).param_groups(net, 0)
    opt = torch.optim.SGD([{"params": g} for g in groups], lr=0.01, momentum=0.9, weight_decay=5e-4)
    ctx = StepContext(net, net, opt, cfg, torch.Generator().manual_seed(0))
    if variant == "ours":
        if method == "advmoe":
            return lambda b: (trades_step(ctx, b[0], 0), trades_step(ctx, b[1], 1))
        return lambda b: trades_step(ctx, b[0])
    if method == "advmoe":
        return lambda b: (naive_trades_step(ctx, b[0], 0), naive_trades_step(ctx, b[1], 1))
    return lambda b: naive_trades_step(ctx, b[0], None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--experts", type=int, default=2)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--router", default="layer")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--methods", default="at-moe,advmoe")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    a = ap.parse_args()
    torch.manual_seed(0)
    base = create_model(a.arch, "moe", experts=a.experts, scale=a.scale, router=a.router, dataset="cifar10")
    cfg = TrainConfig.from_dict(dict(method="at-moe", arch=a.arch, dataset="cifar10", experts=a.experts,
                                     scale=a.scale, router=a.router, eps_str="8/255"))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(a.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (a.batch,), generator=g))
               for _ in range(2)]
    methods = a.methods.split(",")
    runs = {(m, v): make(v, m, base, cfg) for m in methods for v in ("ours", "naive")}
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    for r in range(a.warmup + a.rounds):
        last = {}
        for key, fn in runs.items():
            t = time.perf_counter()
            fn(batches)
            last[key] = time.perf_counter() - t
            if r >= a.warmup:
                times[key].append(last[key])
        tag = " (warm-up)" if r < a.warmup else ""
        print(f"round {r + 1}/{a.warmup + a.rounds}{tag}: " +
              ", ".join(f"{m}/{v} {last[(m, v)]:.2f}s" for m, v in runs), flush=True)
    res = {"arch": a.arch, "batch": a.batch, "experts": a.experts, "scale": a.scale, "router": a.router,
           "input": "3x32x32", "rounds": a.rounds, "warmup": a.warmup, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
           "load_avg_at_end": os.getloadavg()[0], "methods": {}}
    print(f"\n{a.arch} MoE N={a.experts} r={a.scale} router={a.router}, batch {a.batch}, 32x32, "
          f"{torch.get_num_threads()} threads; median of {a.rounds} (after {a.warmup} warm-up)")
    print(f"{'method':8} {'ours s/it':>10} {'naive s/it':>11} {'speed-up':>9}")
    for m in methods:
        o, n = statistics.median(times[(m, "ours")]), statistics.median(times[(m, "naive")])
        res["methods"][m] = {"ours_s": o, "naive_s": n, "speedup": n / o,
                             "ours_all": times[(m, "ours")], "naive_all": times[(m, "naive")]}
        print(f"{m:8} {o:10.3f} {n:11.3f} {n / o:8.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
