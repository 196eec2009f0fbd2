"""Full-copy top-k MoE latency: sparse execution (each expert only on its inputs) against computing every
expert on every input (``masked``), for ConvMoE and BlockMoE in the last stage of ResNet-18 (issue 13).

Forward latency at CIFAR-10 shape (random weights, eval mode, ``torch.inference_mode``), interleaved
rounds, medians. The gates are calibrated so the batch spreads over the experts (random directions on
the whitened pooled features of a calibration batch, as a load-balanced gate would route): with fresh
gates every input picks the same experts and sparse execution would look better than it is. The
measured expert shares are reported.

Expected: sparse / masked about ``(k / N)`` of the MoE part's cost plus the shared rest; the Dense
ResNet-18 is the floor for top-1 (one expert per input = the Dense network's compute).

Run: ``python benchmarks/topk_latency.py`` (defaults: batch 64, 5 rounds, 2 threads); ``--help``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from robustmoe_bench.analysis.latency import time_call  # noqa: E402
from robustmoe_bench.checkpoint import atomic_write_bytes  # noqa: E402
from robustmoe_bench.models import create_model, execution, routing_trace  # noqa: E402
from robustmoe_bench.models.topk import TopKGate  # noqa: E402


@torch.no_grad()
def spread_gates(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    """Random gate directions on the whitened pooled input of each gate (calibrated on ``x``)."""
    gen = torch.Generator().manual_seed(seed)

    def calibrate(gate: TopKGate, args: tuple) -> None:
        pooled = args[0].mean(dim=(2, 3))
        mean, std = pooled.mean(0), pooled.std(0).clamp_min(1e-6)
        w = torch.randn(gate.fc.out_features, pooled.shape[1], generator=gen) / std
        gate.fc.weight.copy_(w)
        gate.fc.bias.copy_(-(w @ mean))

    hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, TopKGate)]
    model(x)
    for h in hooks:
        h.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "topk_latency.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.rand(a.batch, 3, 32, 32)
    models = {"dense": create_model("resnet18", "dense", dataset="cifar10").eval()}
    for moe in ("conv", "block"):
        for k in (1, 2):
            m = create_model("resnet18", "moe", moe=moe, experts=a.experts, k=k, dataset="cifar10").eval()
            spread_gates(m, x)
            models[f"{moe} N={a.experts} k={k}"] = m
    shares = {}
    for name, m in models.items():
        if name == "dense":
            continue
        with torch.no_grad(), routing_trace(m) as tr:
            m(x)
        sets = tr.expert_sets()
        shares[name] = [round(float((sets[0] == e).any(-1).double().mean()), 2) for e in range(a.experts)]
    runs = [(n, ex) for n in models for ex in (("sparse",) if n == "dense" else ("sparse", "masked"))]
    times: dict[tuple[str, str], list[float]] = {r: [] for r in runs}
    with torch.inference_mode():
        for _ in range(a.warmup):
            for n, ex in runs:
                with execution(models[n], ex):
                    models[n](x)
        for _ in range(a.rounds):  # interleaved: load changes hit every configuration alike
            for n, ex in runs:
                with execution(models[n], ex):
                    times[(n, ex)].append(time_call(lambda: models[n](x), x.device))
    med = {r: statistics.median(v) for r, v in times.items()}
    dense = med[("dense", "sparse")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Full-copy top-k MoE: sparse vs computing every expert (benchmarks/topk_latency.py)",
        "",
        f"`python benchmarks/topk_latency.py --batch {a.batch} --rounds {a.rounds} --threads {a.threads} "
        f"--experts {a.experts}` — resnet18, MoE in the last stage, 32x32, eval mode, inference mode; "
        f"{platform.processor() or platform.machine()}, load average {load:.1f} at the end.",
        "",
        "| model | expert shares (layer 1) | sparse ms | all experts ms | sparse / all | sparse / Dense |",
        "|---|---|---:|---:|---:|---:|",
        f"| Dense ResNet-18 | - | {dense:.1f} | - | - | 1.00 |",
    ]
    for n in models:
        if n == "dense":
            continue
        s, m = med[(n, "sparse")], med[(n, "masked")]
        lines.append(f"| {n} | {shares[n]} | {s:.1f} | {m:.1f} | {s / m:.2f} | {s / dense:.2f} |")
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(a.out, text.encode())
    print(text)


if __name__ == "__main__":
    main()
