"""Router robustness of trained MoE runs on their own validation split (never on test examples).

For each run folder (``train``'s output: ``config.json`` and ``ckpt.pt``), on the validation split its config
defines, at the run's eps, one thread:

* **routers alone robust**: the share of inputs whose expert choice, in every MoE layer, a 50-step
  ``router-untargeted`` attack (the suites' router attack, seed 0) cannot change;
* **PGD-50 routing unchanged**: the share whose routing a 50-step PGD on the prediction loss leaves as it was;
* **PGD-50 accuracy**.

Written for the question "is AdvMoE's router step too small at routers x0.01 the learning rate?" (RESULTS,
"Dissection and IoU on the re-run's MoEs"); a validation-split measurement, so choices made from it never
touch test examples.

    .venv/bin/python benchmarks/router_validation_robustness.py RUN [RUN ...] --out results/X.md
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from routing_health import parse_run_folders


def measure(run: Path) -> dict:
    import torch

    from robustmoe_bench.attacks import create_attack
    from robustmoe_bench.attacks.router import clean_routing, routing_changed
    from robustmoe_bench.checkpoint import load_checkpoint
    from robustmoe_bench.training import TrainConfig
    from robustmoe_bench.training.loop import validation_examples

    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    model = load_checkpoint(run / "ckpt.pt").model.eval()
    x, y = validation_examples(cfg)
    x_router = create_attack("router-untargeted", eps=cfg.eps, layers="all", seed=0)(model, x, y)
    x_pgd = create_attack("pgd", eps=cfg.eps, steps=50, seed=0)(model, x, y)
    with torch.no_grad():
        e_clean, _ = clean_routing(model, x)
        e_router, _ = clean_routing(model, x_router)
        e_pgd, _ = clean_routing(model, x_pgd)
        pgd_acc = float((model(x_pgd).argmax(1) == y).float().mean())
    return dict(run=str(run), method=cfg.method, seed=cfg.seed, router_lr=cfg.router_lr, n_val=int(y.shape[0]),
                routers_alone=1 - float(routing_changed(e_router, e_clean).any(dim=0).float().mean()),
                pgd_unchanged=1 - float(routing_changed(e_pgd, e_clean).any(dim=0).float().mean()),
                pgd_acc=pgd_acc)


def main(argv: list[str] | None = None) -> int:
    a = parse_run_folders(argv, __doc__.splitlines()[0])
    if a is None:
        return 2
    rows = [measure(r) for r in a.runs]
    lines = ["# Router robustness on the validation split", "",
             f"`.venv/bin/python benchmarks/router_validation_robustness.py "
             f"{shlex.join(argv if argv is not None else sys.argv[1:])}`", "",
             "| run | method | seed | router lr (x lr) | n val | routers alone robust (%) | PGD-50 routing unchanged (%) "
             "| PGD-50 accuracy (%) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['method']} | {r['seed']} | {r['router_lr']:g} | {r['n_val']} | "
                     f"{100 * r['routers_alone']:.1f} | {100 * r['pgd_unchanged']:.1f} | {100 * r['pgd_acc']:.1f} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
