"""``convert``: bring a checkpoint trained with another project's code into robustmoe-bench."""
from __future__ import annotations

from pathlib import Path

import typer

from ..checkpoint import save_checkpoint
from ..convert import SOURCES, convert_advmoe_public, load_torch_weights, public_training_record
from ..errors import ConfigError
from .app import app, console


@app.command("convert")
def convert_cmd(
    ckpt: Path = typer.Argument(..., help="The file the other code saved (read weights-only: no code runs)."),
    source: str = typer.Option(..., "--from", help=f"Which code wrote it: {', '.join(SOURCES)}."),
    arch: str = typer.Option(..., "--arch", help="Architecture it was trained with (resnet18, vgg16-bn)."),
    experts: int = typer.Option(..., "--experts", help="Number of experts N (their --n-expert)."),
    scale: float = typer.Option(..., "--scale", help="Expert width ratio r (their --ratio)."),
    dataset: str = typer.Option(..., "--dataset", help="Data set it was trained on (classes, input shape)."),
    out: Path = typer.Option(..., "--out", help="The robustmoe-bench checkpoint to write (.safetensors)."),
) -> None:
    """Convert a checkpoint of the AdvMoE public code (OPTML-Group/Robust-MoE-CNN) into ours.

    Then ``evaluate``, ``dissect``, ``iou`` and ``flops`` work on it like on any robustmoe-bench model.
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown --from {source!r}; known: {', '.join(SOURCES)}")
    if out.exists() and out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name")
    raw = load_torch_weights(ckpt)
    model = convert_advmoe_public(raw, arch=arch, experts=experts, scale=scale, dataset=dataset)
    save_checkpoint(out, model, training=public_training_record(raw, ckpt))
    console.print(f"wrote {out}: {model.spec.describe()}, "
                  f"{sum(p.numel() for p in model.parameters()):,} parameters", highlight=False, markup=False)
