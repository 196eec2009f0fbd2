"""Wall time of ``robustmoe-bench dissect --routers`` (issue 5, performance note).

Measures the whole command's work -- load the checkpoint, load the examples, PGD-50 and the
router-untargeted attack (50 steps) once each, the traced forwards, the plot and the JSON -- on the
mini-preset MoE model (``fmnist-mini``, method ``at-moe``) at 1000 test examples. Without ``--ckpt`` the
model is trained first into ``--train-dir`` (reused if a finished run is already there).

Run: ``python benchmarks/dissect_time.py`` (``--help`` for options). Writes
``benchmarks/results/dissect_time.md`` and the dissection itself under ``--work-dir``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from robustmoe_bench.checkpoint import atomic_write_bytes  # noqa: E402


def trained_checkpoint(train_dir: Path, data_root: str | None) -> tuple[Path, float]:
    """The fmnist-mini at-moe checkpoint in ``train_dir`` (trained now if absent) and the training time."""
    from robustmoe_bench.training import TrainConfig, train

    ckpt = train_dir / "ckpt.pt"
    if ckpt.is_file():
        return ckpt, 0.0
    cfg = TrainConfig.from_preset("fmnist-mini", method="at-moe", data_root=data_root)
    t0 = time.perf_counter()
    res = train(cfg, train_dir, progress=True, resume=(train_dir / "config.json").is_file())
    return Path(res.ckpt), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, help="an MoE checkpoint (default: train fmnist-mini at-moe)")
    p.add_argument("--train-dir", type=Path, default=ROOT / "runs" / "bench-fmnist-mini-at-moe")
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench-dissect")
    p.add_argument("--n-examples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dissect_time.md")
    args = p.parse_args(argv)

    from robustmoe_bench.cli import run

    ckpt, train_s = (args.ckpt, 0.0) if args.ckpt else trained_checkpoint(args.train_dir, args.data_root)
    cmd = ["dissect", str(ckpt), "--routers", "--n-examples", str(args.n_examples), "--batch-size",
           str(args.batch_size), "--out", str(args.work_dir)]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    t0 = time.perf_counter()
    rc = run(cmd)
    wall = time.perf_counter() - t0
    if rc != 0:
        print(f"dissect failed with exit code {rc}", file=sys.stderr)
        return rc

    import json

    d = json.loads((args.work_dir / "dissect.json").read_text())
    a, r = d["attack"], d["router_attack"]
    lines = [
        "# `dissect --routers` wall time",
        "",
        f"Command: `robustmoe-bench {' '.join(cmd)}`",
        "",
        f"- model: {d['model']['arch']} MoE (N={d['model']['experts']}, r={d['model']['scale']:g}, "
        f"router={d['model']['router']}), checkpoint `{ckpt}`" + (f" (trained here in {train_s:.0f} s)" if train_s else ""),
        f"- examples: {d['n_examples']}, eps {d['eps_str']}, batch {args.batch_size}",
        f"- **wall time: {wall:.1f} s** (of which {a['attack']}: {a['seconds']:.1f} s, "
        f"{r['attack']}: {r['seconds']:.1f} s; the rest is loading, traced forwards, plot and JSON)",
        "- each attack ran once over the examples; all four categories, per-layer change rates and both "
        "accuracies come from that one pass",
        f"- results: clean {d['clean_acc']:.1f}%, model robustness (①+②) {a['model_robustness']:.1f}%, "
        f"routers' robustness (①+③) {a['router_robustness']:.1f}%, routers alone under the router attack "
        f"{d['routers_alone_robust_acc']:.1f}%",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, load average "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end",
        "",
    ]
    atomic_write_bytes(args.out, "\n".join(lines).encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
