"""``pipeline``: the main job (train, evaluate, dissect, publish, compare) on the embedded default data set."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..pipeline import METHODS, PipelineConfig, run_pipeline
from .app import app, console


@app.command("pipeline")
def pipeline_cmd(
    out: Path = typer.Option(Path("runs/fmnist-demo"), "--out", help="Output folder (re-running resumes)."),
    from_zoo: bool = typer.Option(False, "--from-zoo", help="Take the five models from the model zoo instead of training."),
    methods: str = typer.Option(",".join(METHODS), "--methods", help="Comma-separated training methods."),
    preset: str = typer.Option("fmnist-mini", "--preset", help="Training preset."),
    suite: str = typer.Option("full", "--suite", help="Evaluation suite: quick, standard or full."),
    n_examples: int = typer.Option(50, "--n-examples", help="Test examples per evaluation (seeded subset; the demo default keeps the job within 15 minutes on 2 cores: use 1000+ for numbers to cite)."),
    dissect_examples: int = typer.Option(200, "--dissect-examples", help="Test examples for dissection and IoU."),
    seed: int = typer.Option(0, "--seed"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the data set files."),
    leaderboard_root: Optional[Path] = typer.Option(None, "--leaderboard-root",
                                                    help="Where entries go (default: OUT/leaderboards)."),
    workers: int = typer.Option(0, "--workers", help="Worker processes running the jobs side by side "
                                "(0 = 2 on a machine with >= 2 CPU threads; 1 = one process with live progress bars)."),
) -> None:
    """Train the five robust models (or take them from the zoo), evaluate each, dissect the MoE models,
    publish the leaderboard and print the comparison table."""
    cfg = PipelineConfig(
        out=str(out), preset=preset, methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        from_zoo=from_zoo, suite=suite, n_examples=n_examples, dissect_examples=dissect_examples, seed=seed,
        data_root=str(data_root) if data_root else None,
        leaderboard_root=str(leaderboard_root) if leaderboard_root else None, workers=workers,
    )
    res = run_pipeline(cfg, console)
    console.print(f"\nleaderboard: {', '.join(res.leaderboard_pages) or 'nothing published'}", markup=False)
    console.print(f"comparison: {res.comparison}", markup=False)
    console.print("seconds: " + ", ".join(f"{k} {v:g}" for k, v in res.seconds.items()))
