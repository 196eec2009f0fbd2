"""``fixed-experts``: each expert forced for every input, clean and robust accuracy next to the gated model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .app import app, console


@app.command("fixed-experts")
def fixed_experts_cmd(
    ckpt: Path = typer.Argument(..., help="An MoE checkpoint."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results JSON (written atomically)."),
    n_examples: int = typer.Option(500, "--n-examples", "-n", help="Test examples (seeded subset)."),
    eps: Optional[str] = typer.Option(None, "--eps", help="Radius, e.g. 8/255 (default: the data set's)."),
    steps: int = typer.Option(20, "--steps", help="PGD steps of the attack on each forced expert and on the gated model."),
    seed: int = typer.Option(0, "--seed", help="Seed of the example subset and of the attack."),
    batch_size: int = typer.Option(250, "--batch-size", help="Examples per batch."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the data set."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
) -> None:
    """Fixed-expert evaluation: every MoE layer forced to one expert, each expert in turn."""
    from ..analysis.fixed_expert import fixed_expert_eval

    res = fixed_expert_eval(str(ckpt), n_examples=n_examples, seed=seed, eps=eps, steps=steps, batch_size=batch_size,
                            data_root=data_root, device=device, out=out)
    t = Table(title=f"fixed-expert evaluation of {ckpt.name} on {res.dataset} (n={res.n_examples}, eps={res.eps_str}); "
                    "accuracy % [95% Wilson interval]")
    t.add_column("routing", style="bold")
    t.add_column("clean", justify="right", no_wrap=True)
    t.add_column(res.attack, justify="right", no_wrap=True)
    for r in res.rows:
        t.add_row(r.label, f"{r.clean_acc:.2f} [{r.clean_ci[0]:.1f}, {r.clean_ci[1]:.1f}]",
                  f"{r.robust_acc:.2f} [{r.robust_ci[0]:.1f}, {r.robust_ci[1]:.1f}]")
    console.print(t)
    if res.expert_use:
        from ..adapters.expert_use import ExpertUse

        use = ExpertUse.from_dict(res.expert_use)
        console.print(("[bold red]routing " + escape(use.mark()) + "[/]: " if use.collapsed else "[green]routing[/]: ")
                      + escape(use.summary()), highlight=False)
    if out is not None:
        console.print(f"results written to {out}", markup=False, highlight=False)
