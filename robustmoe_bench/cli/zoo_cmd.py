"""``zoo list | show | add``: named, checksummed models."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..zoo import Zoo, ZooError, get_zoo_model, load_zoo_checkpoint, register_zoo_model, weights_status, zoo_models
from .app import app, console, err_console

zoo_app = typer.Typer(help="Named, checksummed models and the results behind their leaderboard entries.",
                      no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")

ROOT_HELP = "Zoo folder (registry.json + weight files); default: $ROBUSTMOE_ZOO or the packaged zoo."
_STYLE = {"ok": "green", "MISMATCH": "bold red", "missing": "red", "not downloaded": "yellow"}


@zoo_app.command("list")
def list_cmd(
    root: Optional[Path] = typer.Option(None, "--root", help=ROOT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the zoo's models with their checksum status (weights are hashed, never fetched)."""
    models = zoo_models(root)
    status = {m.name: weights_status(m, root) for m in models}
    if as_json:
        console.print_json(json.dumps([dict(name=m.name, status=status[m.name], **m.to_dict()) for m in models]))
    else:
        zoo = Zoo.resolve(root)
        t = Table(title=escape(f"Model zoo ({zoo.registry_path})"))
        for col in ("name", "model", "method", "results", "weights"):
            t.add_column(col, style="bold" if col == "name" else None)
        for m in models:
            s = status[m.name]
            t.add_row(escape(m.name), escape(_describe(m.model)), escape(str(m.training.get("method", ""))),
                      escape(m.headline) + (f"; expert use: {_health(m.routing_health)}" if m.routing_health else ""),
                      f"[{_STYLE[s]}]{s}[/]")
        if not models:
            console.print(f"the zoo at {zoo.registry_path} is empty", highlight=False, soft_wrap=True, markup=False)
        else:
            console.print(t)
    bad = sorted(n for n, s in status.items() if s == "MISMATCH")
    if bad:
        raise ZooError(f"{len(bad)} model(s) failed sha256 verification: {', '.join(bad)}")


def _health(text: str) -> str:
    return f"[bold red]{escape(text)}[/]" if text.startswith("COLLAPSED") else escape(text)


def _describe(spec: dict) -> str:
    from ..models import ModelSpec

    try:
        return ModelSpec.from_dict(spec).describe()
    except Exception:  # noqa: BLE001 -- a listing shows what it can
        return str(spec.get("arch", "?"))


@zoo_app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="Zoo model name."),
    root: Optional[Path] = typer.Option(None, "--root", help=ROOT_HELP),
    download: bool = typer.Option(False, "--download", help="Fetch a URL-hosted model if it is not cached."),
    as_json: bool = typer.Option(False, "--json", help="Print the registry record as JSON."),
) -> None:
    """Show one model's record, then verify its weights' sha256 and load it."""
    m = get_zoo_model(name, root)
    if as_json:
        console.print_json(json.dumps(dict(name=m.name, **m.to_dict())))
    else:
        t = Table(title=escape(f"zoo model {m.name}"), show_header=False)
        t.add_column("key", style="bold")
        t.add_column("value")
        t.add_row("model", escape(_describe(m.model)))
        if m.description:
            t.add_row("description", escape(m.description))
        t.add_row("weights", escape(m.file if m.file is not None else str(m.url)))
        t.add_row("sha256", m.sha256)
        t.add_row("size", f"{m.size_bytes:,} bytes")
        if m.training:
            t.add_row("training", escape(json.dumps(m.training, sort_keys=True)))
        t.add_row("results", escape(m.headline))
        if m.routing_health:
            t.add_row("expert use", _health(m.routing_health))
        if m.results and m.results.get("gflops"):
            g = m.results["gflops"]
            t.add_row("GFLOPs", escape(f"pathway {g.get('pathway')}, router {g.get('router')}, total {g.get('total')}"))
        if m.leaderboard:
            t.add_row("leaderboard entry", escape(m.leaderboard))
        console.print(t)
    ckpt = load_zoo_checkpoint(name, root, download=download)  # raises on a mismatch
    n = sum(p.numel() for p in ckpt.model.parameters())
    # With --json, stdout stays pure JSON; the verification note goes to stderr.
    (err_console if as_json else console).print(
        f"[green]sha256 verified[/]; loaded {n:,} parameters", highlight=False, soft_wrap=True)


@zoo_app.command("add")
def add_cmd(
    name: str = typer.Argument(..., help="Zoo model name (letters, digits, _ - .)."),
    ckpt: Path = typer.Argument(..., help="Checkpoint to add (copied into the zoo folder)."),
    results: Optional[Path] = typer.Option(None, "--results", help="Evaluation results JSON behind its leaderboard entry."),
    leaderboard: Optional[Path] = typer.Option(None, "--leaderboard", help="Path of its leaderboard entry JSON."),
    url: Optional[str] = typer.Option(None, "--url", help="Record this download URL instead of copying the file."),
    description: str = typer.Option("", "--description", help="One line about the model."),
    root: Optional[Path] = typer.Option(None, "--root", help=ROOT_HELP),
    force: bool = typer.Option(False, "--force", help="Replace an existing model of the same name."),
) -> None:
    """Add a checkpoint to the zoo: copy it, record its sha256, model spec, training and results."""
    m = register_zoo_model(name, ckpt, results, root=root, url=url, description=description,
                           leaderboard=leaderboard, force=force)
    where = m.url if m.url is not None else str(Zoo.resolve(root).files_dir / str(m.file))
    console.print(f"added {m.name}: {where} (sha256 {m.sha256[:12]}..., {m.size_bytes:,} bytes); {m.headline}",
                  highlight=False, soft_wrap=True, markup=False)
