"""``train``: train a model with one of the registered methods (thin: parse, call the library, print)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from rich.markup import escape
from .app import app, console


def parse_stages(text: str) -> list[int]:
    """``"3,4"`` -> ``[3, 4]`` (``--moe-stages``)."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ConfigError(f"--moe-stages: {part!r} is not a stage number (give e.g. 3 or 3,4)")
        out.append(int(part))
    return out


@app.command("train")
def train_cmd(
    method: Optional[str] = typer.Option(None, "--method", help="std, at-dense, at-sdense, at-sparse, at-moe, advmoe, advmoe-public."),
    kind: Optional[str] = typer.Option(None, "--kind", help="std only: model kind dense, sdense, sparse or moe."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture (see `robustmoe-bench models`)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Data set name, e.g. fashion-mnist, cifar10."),
    experts: Optional[int] = typer.Option(None, "--experts", help="Experts per MoE layer (MoE methods; >= 2)."),
    scale: Optional[float] = typer.Option(None, "--scale", help="Model scale r in (0, 1]."),
    router: Optional[str] = typer.Option(None, "--router", help="MoE router: resnet (default), shared or layer."),
    layout: Optional[str] = typer.Option(None, "--layout", help="MoE expert layout: compact (default) or slice."),
    ste: Optional[str] = typer.Option(None, "--ste", help="MoE straight-through estimator: identity (default) or softmax."),
    moe: Optional[str] = typer.Option(None, "--moe", help="What an expert is: channel (default; channel slices), conv (ConvMoE: whole convs) or block (BlockMoE: whole residual blocks)."),
    k: Optional[int] = typer.Option(None, "--k", help="--moe conv/block: experts per input (top-k gate; default 1)."),
    moe_stages: Optional[str] = typer.Option(None, "--moe-stages", help="--moe conv/block: resnet stages holding experts, 1-based, comma-separated (default: the last)."),
    noise: Optional[float] = typer.Option(None, "--noise", help="--moe conv/block: noisy-gating std in training (default 0)."),
    capacity: Optional[float] = typer.Option(None, "--capacity", help="--moe conv/block: expert capacity factor in training (default 0 = none)."),
    balance: Optional[str] = typer.Option(None, "--balance", help="MoE: balancing loss of the gates: switch (default), entropy, cv2 or none (channel family: ours, not the paper's; advmoe-public: none)."),
    balance_weight: Optional[float] = typer.Option(None, "--balance-weight", help="MoE: weight of the balancing loss (default 0.5)."),
    router_z: Optional[float] = typer.Option(None, "--router-z", help="MoE: weight of the router z-loss (default 0 = off)."),
    router_lr: Optional[float] = typer.Option(None, "--router-lr", help="MoE: the routers' learning rate as a multiple of --lr (channel family default 0.01, ours; top-k default 1). --balance none --router-lr 1 is the paper's objective."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (at-sparse: over all three phases)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (cosine decay)."),
    eps: Optional[str] = typer.Option(None, "--eps", help="L-inf radius in [0,1] units, e.g. 0.1 or 8/255."),
    train_steps: Optional[int] = typer.Option(None, "--train-steps", help="PGD steps K of the TRADES attack."),
    step_size: Optional[float] = typer.Option(None, "--step-size", help="TRADES attack step (default 0.625*eps)."),
    trades_start: Optional[str] = typer.Option(None, "--trades-start", help="TRADES attack start: normal (default) or uniform."),
    beta: Optional[float] = typer.Option(None, "--beta", help="TRADES beta."),
    ema: Optional[float] = typer.Option(None, "--ema", help="Output a moving average of the weights with this decay, e.g. 0.999 (default: off, the last iterate)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    subset: Optional[int] = typer.Option(None, "--subset", help="Train on this many training examples."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (new or empty)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Named setup, e.g. fmnist-mini."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder."),
    from_dense: Optional[Path] = typer.Option(None, "--from-dense", help="at-sparse: start from this Dense checkpoint."),
    finetune_lr: Optional[float] = typer.Option(None, "--finetune-lr", help="at-sparse: the finetune phase's peak learning rate as a multiple of --lr, in (0, 1] (default 1)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda[:i]."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the data set files."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data-loading workers (on-disk data sets)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or per-epoch lines."),
) -> None:
    """Train into --out: ckpt.pt, config.json, metrics.jsonl, trajectory.png."""
    from ..training import TrainConfig, train
    from ..training.outputs import read_config

    runtime = {"device": device, "workers": workers,
               "data_root": str(data_root) if data_root is not None else None}
    runtime = {k: v for k, v in runtime.items() if v is not None}
    given = {
        "method": method, "kind": kind, "arch": arch, "dataset": dataset, "experts": experts, "scale": scale,
        "router": router, "layout": layout, "ste": ste, "step_size": step_size, "trades_start": trades_start,
        "moe": moe, "k": k, "moe_stages": parse_stages(moe_stages) if moe_stages is not None else None,
        "noise": noise, "capacity": capacity, "balance": balance, "balance_weight": balance_weight,
        "router_z": router_z, "router_lr": router_lr,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "eps_str": eps, "train_steps": train_steps,
        "beta": beta, "ema": ema, "seed": seed, "subset": subset,
        "from_dense": str(from_dense) if from_dense is not None else None, "finetune_lr": finetune_lr,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if resume is not None:
        if given or preset is not None:
            flags = ", ".join("--" + k.replace("_str", "").replace("_", "-") for k in given)
            raise ConfigError(f"--resume takes the run's settings from {resume}/config.json; drop {flags or '--preset'}")
        if out is not None and out.resolve() != resume.resolve():
            raise ConfigError(f"--out {out} differs from --resume {resume}; give only --resume")
        cfg = read_config(resume)
        for k, v in runtime.items():
            setattr(cfg, k, v)
        target = resume
    else:
        if out is None:
            raise ConfigError("--out DIR is required (or --resume DIR)")
        if "method" not in given:
            raise ConfigError("--method is required")
        if preset is not None:
            cfg = TrainConfig.from_preset(preset, **given, **runtime)
        else:
            missing = [f"--{k}" for k in ("arch", "dataset") if k not in given]
            if missing:
                raise ConfigError(f"{' and '.join(missing)} required (or use --preset fmnist-mini)")
            cfg = TrainConfig.from_dict({**given, **runtime})
        target = out
    result = train(cfg, target, progress=not quiet, resume=resume is not None)
    if not quiet and os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        console.print(
            f"[bold]done[/]: {escape(str(result.ckpt))}  clean {result.final_clean_acc:.1f}%  "
            f"PGD-10 {result.final_pgd10_acc:.1f}%  ({result.seconds:.0f}s over {result.epochs} epochs)",
            highlight=False,
        )
