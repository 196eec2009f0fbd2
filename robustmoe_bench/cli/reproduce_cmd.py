"""``reproduce``: the mini Table 1 (five methods x seeds, PGD-50 + AutoAttack, the paper's claims judged)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ..pipeline import METHODS
from .app import app, console


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got {text!r}") from None


@app.command("reproduce")
def reproduce_cmd(
    out: Path = typer.Option(Path("runs/table1"), "--out", help="Output folder (re-running resumes)."),
    preset: str = typer.Option("fmnist-repro", "--preset", help="Training preset (larger than the demo's)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated training seeds (at least two)."),
    methods: str = typer.Option(",".join(METHODS), "--methods", help="Comma-separated methods (the paper's five)."),
    suite: str = typer.Option("table1", "--suite", help="Evaluation suite (table1: PGD-50, PGD-50 with the paper's step eps/4, "
                                                        "the adaptive and router attacks on MoE models, AutoAttack alone)."),
    n_examples: int = typer.Option(1000, "--n-examples", help="Test examples per model (the same for every seed)."),
    eval_seed: int = typer.Option(0, "--eval-seed", help="Seed of the evaluated test subset and of the attacks."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the data set files."),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0 = 2 on a machine with >= 2 CPU threads)."),
) -> None:
    """Train the paper's five methods with several seeds, evaluate each on the same test examples and write
    table1.md / table1.json: mean +- std per method and whether each of the paper's claims held."""
    from ..reproduce import ReproduceConfig, reproduce

    cfg = ReproduceConfig(out=str(out), preset=preset, seeds=_ints(seeds, "--seeds"),
                          methods=tuple(m.strip() for m in methods.split(",") if m.strip()), suite=suite,
                          n_examples=n_examples, eval_seed=eval_seed,
                          data_root=str(data_root) if data_root else None, workers=workers)
    doc = reproduce(cfg, console)
    console.rule("the paper's claims")
    for c in doc["claims"]:
        console.print(c["line"].replace("**", ""), highlight=False, markup=False)
    console.print(f"table: {Path(cfg.out) / 'table1.md'}")
