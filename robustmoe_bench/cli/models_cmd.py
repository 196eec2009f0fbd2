"""``models``, ``info`` and ``flops``: what can be built, what a checkpoint holds, what it costs."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..checkpoint import load_checkpoint, read_meta
from ..models import ARCHITECTURES, KINDS, ROUTERS
from ..models.factory import architecture_doc
from rich.markup import escape
from .app import app, console


@app.command("models")
def models_cmd(
    pattern: str = typer.Argument("*", help="Wildcard filter on architecture names, e.g. 'resnet*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List architectures, model kinds and router designs."""
    archs = ARCHITECTURES.names(pattern)
    if as_json:
        console.print_json(json.dumps({
            "architectures": archs, "kinds": KINDS.names(), "routers": ROUTERS.names(),
            "expert_kinds": _expert_kinds(),
            "note": "any wrn-D-W with D = 6n+4 is also accepted",
        }))
        return
    t = Table(title="Architectures (any wrn-D-W with D = 6n+4 also works)")
    t.add_column("name", style="bold")
    t.add_column("description")
    for a in archs:
        t.add_row(a, architecture_doc(a))
    console.print(t)
    k = Table(title="Kinds and routers")
    k.add_column("name", style="bold")
    k.add_column("what it is")
    for name in KINDS.names():
        k.add_row(f"--kind {name}", KINDS.get(name))
    for name in ROUTERS.names():
        k.add_row(f"--router {name}", ROUTERS.get(name))
    from ..models.builder import MOE_EXPERTS

    for name in MOE_EXPERTS.names():
        k.add_row(f"--moe {name}", MOE_EXPERTS.get(name))
    console.print(k)


def _expert_kinds() -> list[str]:
    from ..models.builder import MOE_EXPERTS

    return MOE_EXPERTS.names()


@app.command("info")
def info_cmd(
    ckpt: Path = typer.Argument(..., help="A robustmoe-bench checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show what a checkpoint holds: model spec, training method and hyper-parameters, sizes."""
    meta = read_meta(ckpt)
    loaded = load_checkpoint(ckpt)
    model = loaded.model
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "path": str(ckpt),
        "model": meta["model"],
        "description": model.spec.describe(),
        "parameters": n_params,
        "moe_layers": len(model.moe_layers()),
        "training": meta.get("training", {}),
        "package_version": meta.get("package_version"),
        "extra": meta.get("extra", {}),
    }
    if as_json:
        console.print_json(json.dumps(info, default=str))
        return
    t = Table(title=escape(str(ckpt)), show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    t.add_row("model", escape(info["description"]))
    t.add_row("parameters", f"{n_params:,}")
    t.add_row("MoE layers", str(info["moe_layers"]))
    spec = meta["model"]
    t.add_row("input", escape(f"{tuple(spec['input_shape'])}, {spec['num_classes']} classes"))
    tr = info["training"]
    if tr:
        t.add_row("training", escape(json.dumps(tr, sort_keys=True)))
    t.add_row("written by", escape(f"robustmoe-bench {info['package_version']}"))
    console.print(t)
