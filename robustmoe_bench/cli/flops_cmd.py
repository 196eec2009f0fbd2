"""``flops``: GFLOPs per input (fvcore convention, MoE pathway / router split) and measured latency."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.markup import escape
from rich.table import Table

from ..flops import GFlops, gflops, is_router_module
from ..analysis.latency import measure_latency
from ..checkpoint import load_checkpoint
from ..data import as_tensors, load_dataset, subset_indices
from ..errors import ConfigError
from ..models import RoutedNet, create_model
from . import model_options as mo
from .app import app, console

LATENCY_BATCHES = (1, 128)


def _model_from_args(ckpt: Optional[Path], arch: Optional[str], kind: str, experts: int, scale: float,
                     router: str, dataset: str) -> RoutedNet:
    if ckpt is None and arch is None:
        raise ConfigError("give a checkpoint, or --arch (with --kind and --dataset) to count a fresh model")
    if ckpt is not None and arch is not None:
        raise ConfigError("give either a checkpoint or --arch, not both (a checkpoint carries its model spec)")
    if ckpt is not None:
        return load_checkpoint(ckpt).model
    return create_model(arch, kind=kind, experts=experts, scale=scale, router=router, dataset=dataset)  # type: ignore[arg-type]


def _test_inputs(model: RoutedNet, data_root: Optional[Path], n: int, seed: int) -> torch.Tensor:
    """``[n, C, H, W]`` test examples of the model's data set (a missing data set is a DataError)."""
    ds = load_dataset(model.spec.dataset, "test", root=data_root)
    x, _ = as_tensors(ds, subset_indices(len(ds), min(n, len(ds)), seed))
    if tuple(x.shape[1:]) != tuple(model.spec.input_shape):
        raise ConfigError(f"test images are {tuple(x.shape[1:])} but the model expects {model.spec.input_shape}")
    return x


@app.command("flops")
def flops_cmd(
    ckpt: Optional[Path] = typer.Argument(None, help="A checkpoint: count over the routing of real test inputs."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Count a freshly built model of this architecture."),
    kind: str = typer.Option("dense", "--kind", help="dense | sdense | sparse | moe (with --arch)."),
    experts: int = typer.Option(2, "--experts", help="MoE experts N (with --arch)."),
    scale: float = typer.Option(0.5, "--scale", help="Model scale r (with --arch)."),
    router: str = typer.Option("layer", "--router", help="layer | shared (with --arch)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Data set giving shape and classes (with --arch: "
                                          "default cifar10; with --model: required)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where the test set lives (with a checkpoint)."),
    n_examples: int = typer.Option(256, "--n-examples", help="Test inputs whose routing is averaged (checkpoint)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the test subset."),
    latency: bool = typer.Option(False, "--latency", help="Also: saving vs Dense and measured latency."),
    repeats: int = typer.Option(10, "--repeats", help="Timed repeats per latency measurement."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    model_factory: Optional[str] = mo.MODEL,
    model_arg: list[str] = mo.MODEL_ARG,
    weights: Optional[Path] = mo.WEIGHTS,
    weights_key: Optional[str] = mo.WEIGHTS_KEY,
    output_key: Optional[str] = mo.OUTPUT_KEY,
    normalize: Optional[str] = mo.NORMALIZE,
    input_size: Optional[str] = mo.INPUT_SIZE,
    router_modules: Optional[str] = mo.ROUTER_MODULES,
    router_top_k: int = mo.ROUTER_TOP_K,
    adapter: Optional[str] = mo.ADAPTER,
) -> None:
    """GFLOPs per input (one multiply-add = one FLOP): MoE pathway (chosen experts only) + router."""
    if n_examples < 1 or repeats < 1:
        raise ConfigError("--n-examples and --repeats must be >= 1")
    if model_factory is not None:
        if ckpt is not None or arch is not None:
            raise ConfigError("give a checkpoint, --arch or --model, only one")
        if latency:
            raise ConfigError("--latency compares with our Dense model of the same architecture; not for --model")
        opts = mo.ModelOptions(model_factory, model_arg, weights, weights_key, output_key, normalize, input_size,
                               router_modules, router_top_k, True, adapter, dataset)
        opts.check(None)
        ext = opts.load()
        ds = load_dataset(ext.dataset, "test", root=data_root)
        xs, _ = as_tensors(ds, subset_indices(len(ds), min(n_examples, len(ds)), seed))
        g = gflops(ext, xs)
        out_ext: dict = {
            "gflops_pathway": g.pathway, "gflops_router": g.router, "gflops_total": g.total, "n_inputs": g.n_inputs,
            "inputs": "test set", "model": ext.describe(), "description": mo.model_description(ext),
            "per_module": g.per_module,
            "convention": "fvcore: one multiply-add = one FLOP; per input; the operators the model's code runs",
        }
        if as_json:
            console.print_json(json.dumps(out_ext))
            return
        _print_table(ext, g, out_ext, Path(model_factory), router_of=lambda n: any(
            n == "net." + r or n.startswith("net." + r + ".") for r in (ext.routing_adapter.router_modules()
                                                                         if ext.routing_adapter else [])))
        return
    model = _model_from_args(ckpt, arch, kind, experts, scale, router, dataset or "cifar10")
    x = _test_inputs(model, data_root, n_examples, seed) if ckpt is not None else None
    g = gflops(model, x)
    out: dict = {
        "gflops_pathway": g.pathway, "gflops_router": g.router, "gflops_total": g.total,
        "n_inputs": g.n_inputs, "inputs": "test set" if ckpt is not None else "random",
        "model": model.spec.to_dict(), "description": model.spec.describe(), "per_module": g.per_module,
        "convention": "fvcore: one multiply-add = one FLOP; per input; MoE counts chosen experts only",
    }
    if latency:
        out.update(_latency_report(model, g, repeats))
    if as_json:
        console.print_json(json.dumps(out))
        return
    _print_table(model, g, out, ckpt)


def _latency_report(model: RoutedNet, g: GFlops, repeats: int) -> dict:
    s = model.spec
    torch.manual_seed(0)
    dense = create_model(s.arch, kind="dense", dataset=s.dataset, num_classes=s.num_classes,
                         input_shape=s.input_shape).to(next(model.parameters()).device)
    dg = gflops(dense)
    lat = {}
    for b in LATENCY_BATCHES:
        lat[f"batch_{b}"] = {
            "model": measure_latency(model, s.input_shape, b, repeats, warmup=2).to_dict(),
            "dense": measure_latency(dense, s.input_shape, b, repeats, warmup=2).to_dict(),
        }
    return {"dense_gflops_total": dg.total, "saving_vs_dense": 1.0 - g.total / dg.total, "latency_ms": lat}


def _print_table(model: torch.nn.Module, g: GFlops, out: dict, ckpt: Optional[Path],
                 router_of=is_router_module) -> None:  # noqa: ANN001
    t = Table(title=f"GFLOPs per input: {escape(mo.model_description(model))} (fvcore: 1 multiply-add = 1 FLOP)")
    t.add_column("module", style="bold")
    t.add_column("part")
    t.add_column("FLOPs", justify="right")
    t.add_column("share", justify="right")
    for name, v in g.per_module.items():
        t.add_row(escape(name) if name else "(top level)", "router" if router_of(name) else "pathway",
                  f"{v * 1e9:,.0f}", f"{100 * v / g.total:.1f}%")
    console.print(t)
    src = f"averaged over {g.n_inputs} test inputs" if ckpt is not None else "one random input"
    console.print(f"pathway {g.pathway:.6f} GFLOPs + router {g.router:.6f} GFLOPs = "
                  f"[bold]{g.total:.6f} GFLOPs[/] per input ({src})")
    if "latency_ms" in out:
        console.print(f"Dense {model.spec.arch}: {out['dense_gflops_total']:.6f} GFLOPs; "
                      f"saving [bold]{100 * out['saving_vs_dense']:.1f}%[/]")
        lt = Table(title="Measured forward latency (median ms, p10-p90; eval, inference mode)")
        for c in ("batch", "this model", "Dense", "ratio"):
            lt.add_column(c, justify="right")
        for key, d in out["latency_ms"].items():
            m, dn = d["model"], d["dense"]
            lt.add_row(key.split("_")[1], f"{m['median_ms']:.2f} ({m['p10']:.2f}-{m['p90']:.2f})",
                       f"{dn['median_ms']:.2f} ({dn['p10']:.2f}-{dn['p90']:.2f})",
                       f"{m['median_ms'] / dn['median_ms']:.3f}")
        console.print(lt)
