"""Routing health of trained MoE runs, measured on their own validation split (never on test examples).

For each run folder (``train``'s output: ``config.json`` and ``ckpt.pt``) with a routed model: the busiest
expert's share per MoE layer (highest over the layers), the normalised entropy (lowest over the layers), the collapse flag, and the
forced-expert prediction change (the share of predictions that change when every input is forced onto
another expert), on the validation split that the run's config defines. Against the routing issue's
targets: busiest <= 75 % at N = 2 / <= 50 % at N = 4, forced change >= 10 %.

    .venv/bin/python benchmarks/routing_health.py benchmarks/results/table1-v2/seed-*/models/{at-moe,advmoe} \\
        --out benchmarks/results/table1-v2/routing_health.md
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from routing_balance import TARGET_BUSIEST, TARGET_FORCED


def measure(run: Path) -> dict:
    import torch

    from robustmoe_bench.adapters.expert_use import expert_use_of, forced_change_rate
    from robustmoe_bench.checkpoint import load_checkpoint
    from robustmoe_bench.training import TrainConfig
    from robustmoe_bench.training.loop import validation_examples

    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    model = load_checkpoint(run / "ckpt.pt").model.eval()
    hx, hy = validation_examples(cfg)
    use = expert_use_of(model, hx)
    if use is None:
        raise SystemExit(f"error: {run} holds no routed model")
    with torch.no_grad():
        clean = float((model(hx).argmax(1) == hy).float().mean())
    forced = forced_change_rate(model, hx)
    n_exp = cfg.experts
    busiest, entropy = max(use.busiest_share), min(use.entropy_normalised)  # the worst layer
    ok = busiest <= TARGET_BUSIEST.get(n_exp, 1.0) and forced is not None and forced >= TARGET_FORCED
    return dict(run=str(run), method=cfg.method, seed=cfg.seed, experts=n_exp, n_val=int(hx.shape[0]),
                val_clean=clean, busiest=busiest, entropy=entropy,
                collapsed=use.collapsed, forced_change=forced, targets_met=ok)


def parse_run_folders(argv: list[str] | None, description: str,
                      needs: tuple[str, ...] = ("config.json", "ckpt.pt")) -> argparse.Namespace | None:
    """``RUN [RUN ...] --out FILE`` for the benchmarks that measure finished ``train`` folders; ``None`` (after
    one line on stderr) when some RUN lacks one of the files in ``needs``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("runs", nargs="+", type=Path, help=f"train output folders ({' + '.join(needs)})")
    ap.add_argument("--out", type=Path, required=True, help="markdown table to write")
    a = ap.parse_args(argv)
    for r in a.runs:
        if not all((r / f).is_file() for f in needs):
            print(f"error: {r} is not a finished train folder (needs {' and '.join(needs)})", file=sys.stderr)
            return None
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_run_folders(argv, __doc__.splitlines()[0])
    if a is None:
        return 2
    rows = [measure(r) for r in a.runs]
    lines = ["# Routing health on the validation split", "",
             f"`.venv/bin/python benchmarks/routing_health.py {shlex.join(argv if argv is not None else sys.argv[1:])}`", "",
             "busiest: the busiest expert's share of the validation inputs, highest over the MoE layers; "
             "forced change: predictions changed when every input is forced onto another expert. Targets: "
             "busiest <= 75 % (N = 2) / <= 50 % (N = 4), forced change >= 10 %.", "",
             "| run | method | seed | N | n val | val clean (%) | busiest (%) | entropy | collapsed | "
             "forced change (%) | targets met |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        forced = "-" if r["forced_change"] is None else f"{100 * r['forced_change']:.1f}"
        lines.append(f"| {r['run']} | {r['method']} | {r['seed']} | {r['experts']} | {r['n_val']} | "
                     f"{100 * r['val_clean']:.1f} | {100 * r['busiest']:.1f} | {r['entropy']:.3f} | "
                     f"{'yes' if r['collapsed'] else 'no'} | "
                     f"{forced} | "
                     f"{'yes' if r['targets_met'] else 'no'} |")
    text = "\n".join(lines) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
