"""``dissect``, ``iou`` and ``sweep``: why a model is (not) robust, and how N and r trade off."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ConfigError
from . import model_options as mo
from .app import app, console


def _load_examples(dataset: str, split: str, n: int, seed: int, root: Optional[Path]):
    """``n`` seeded examples of ``dataset``'s ``split`` as ``(x [n, C, H, W], y [n])``."""
    from ..data import as_tensors, load_dataset, subset_indices

    if n < 1:
        raise ConfigError(f"--n-examples must be at least 1, got {n}")
    ds = load_dataset(dataset, split, root=root)
    return as_tensors(ds, subset_indices(len(ds), n, seed))


def _eps(value: Optional[str]) -> Optional[float]:
    from ..config import parse_eps

    return None if value is None else parse_eps(value)


def _moe_model(ckpt: Optional[Path], opts: mo.ModelOptions, what: str):
    """Our MoE checkpoint's model, or an external model with a routing adapter."""
    from ..adapters.external import model_dataset
    from ..analysis.dissect import require_moe

    model = mo.load_model(ckpt, opts)
    require_moe(model, f"{what} of {mo.model_label(ckpt, opts)}")
    return model, model_dataset(model)


@app.command("dissect")
def dissect_cmd(
    ckpt: Optional[Path] = typer.Argument(None, help="An MoE checkpoint; or use --model with a routing adapter."),
    out: Path = typer.Option(..., "--out", help="Folder for dissect.json and dissect.png."),
    routers: bool = typer.Option(False, "--routers", help="Also dissect under the router-untargeted attack."),
    attack: str = typer.Option("pgd50", "--attack", help="Model attack: pgdK (e.g. pgd50) or any attack name."),
    router_steps: Optional[int] = typer.Option(None, "--router-steps", help="Steps of the router attack (default 50)."),
    n_examples: int = typer.Option(1000, "--n-examples", help="Test examples (seeded subset)."),
    eps: Optional[str] = typer.Option(None, "--eps", help="Radius, e.g. 8/255 (default: the data set's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the example subset and of the attacks."),
    batch_size: int = typer.Option(256, "--batch-size", help="Examples per attack batch."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the data set."),
    split: str = typer.Option("test", "--split", help="Data split."),
    model: Optional[str] = mo.MODEL,
    model_arg: list[str] = mo.MODEL_ARG,
    weights: Optional[Path] = mo.WEIGHTS,
    weights_key: Optional[str] = mo.WEIGHTS_KEY,
    output_key: Optional[str] = mo.OUTPUT_KEY,
    normalize: Optional[str] = mo.NORMALIZE,
    input_size: Optional[str] = mo.INPUT_SIZE,
    router_modules: Optional[str] = mo.ROUTER_MODULES,
    router_top_k: int = mo.ROUTER_TOP_K,
    router_forcing: bool = mo.ROUTER_FORCING,
    adapter: Optional[str] = mo.ADAPTER,
    dataset: Optional[str] = mo.DATASET,
) -> None:
    """Four-category dissection: are the routers, the prediction, both or neither fooled?"""
    from ..analysis.dissect import CATEGORIES, CATEGORY_LABELS, dissect, plot_dissection

    opts = mo.ModelOptions(model, model_arg, weights, weights_key, output_key, normalize, input_size, router_modules,
                           router_top_k, router_forcing, adapter, dataset)
    net, data_name = _moe_model(ckpt, opts, "dissection")
    label = mo.model_label(ckpt, opts)
    x, y = _load_examples(data_name, split, n_examples, seed, data_root)
    res = dissect(net, x, y, attack=attack, routers=routers, eps=_eps(eps), seed=seed, batch_size=batch_size,
                  router_steps=router_steps)
    res.checkpoint = str(ckpt) if ckpt is not None else None
    plot_dissection(res, out / "dissect.png", title=f"{label}: {mo.model_description(net)}")
    res.save(out / "dissect.json")  # last: its presence means the run finished

    t = Table(title=f"Dissection of {escape(label)} on {res.n_examples} examples (ε={res.eps_str}, "
                    f"clean acc {res.clean_acc:.2f}%)")
    t.add_column("")
    for d in res.dissections():
        t.add_column(escape(d.attack), justify="right")
    for cat in CATEGORIES:
        t.add_row(CATEGORY_LABELS[cat], *(f"{d.counts[cat]} ({d.percent[cat]:.2f}%)" for d in res.dissections()))
    t.add_row("routers' robustness ①+③", *(f"{d.router_robustness:.2f}%" for d in res.dissections()))
    t.add_row("model's robustness ①+②", *(f"{d.model_robustness:.2f}%" for d in res.dissections()))
    for name in res.layers:
        t.add_row(f"routing changed: {escape(name)}", *(f"{d.layer_change_rates[name]:.2f}%" for d in res.dissections()))
    console.print(t)
    if res.routers_alone_robust_acc is not None:
        console.print(f"robust accuracy of the routers alone (routing unchanged under router attack): "
                      f"{res.routers_alone_robust_acc:.2f}%")
    if res.utilisation is not None:  # expert collapse: the busiest expert's share, entropy / max
        for key in ("clean", "adversarial"):
            u = res.utilisation[key]
            parts = [f"{escape(n)} busiest {100 * b:.1f}%, entropy {e:.2f}"
                     for n, b, e in zip(res.layers, u["busiest_share"], u["entropy_normalised"])]
            console.print(f"expert utilisation ({key}): " + "; ".join(parts), highlight=False)
        if res.utilisation["clean"].get("collapsed"):
            console.print("[bold red]routing COLLAPSED[/] on the clean inputs (some MoE layer sends >= 99 % of them "
                          "to one expert): the routers' robustness above describes a router that cannot change",
                          highlight=False)
    console.print(f"wrote {out / 'dissect.json'} and {out / 'dissect.png'} ({res.seconds:.1f} s)", markup=False)


@app.command("iou")
def iou_cmd(
    ckpt: Optional[Path] = typer.Argument(None, help="An MoE checkpoint; or use --model with a routing adapter."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="A Sparse (Hydra) checkpoint of the same backbone "
                                        "(required for a checkpoint; without it, --model's pathways are compared "
                                        "with its majority pathway)."),
    out: Path = typer.Option(..., "--out", help="Folder for iou.json, iou.png and utilisation.png."),
    attack: str = typer.Option("pgd50", "--attack", help="Attack for the adversarial inputs."),
    n_examples: int = typer.Option(1000, "--n-examples", help="Test examples (seeded subset)."),
    eps: Optional[str] = typer.Option(None, "--eps", help="Radius (default: the data set's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the example subset and of the attack."),
    batch_size: int = typer.Option(256, "--batch-size", help="Examples per attack batch."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the data set."),
    split: str = typer.Option("test", "--split", help="Data split."),
    model: Optional[str] = mo.MODEL,
    model_arg: list[str] = mo.MODEL_ARG,
    weights: Optional[Path] = mo.WEIGHTS,
    weights_key: Optional[str] = mo.WEIGHTS_KEY,
    output_key: Optional[str] = mo.OUTPUT_KEY,
    normalize: Optional[str] = mo.NORMALIZE,
    input_size: Optional[str] = mo.INPUT_SIZE,
    router_modules: Optional[str] = mo.ROUTER_MODULES,
    router_top_k: int = mo.ROUTER_TOP_K,
    router_forcing: bool = mo.ROUTER_FORCING,
    adapter: Optional[str] = mo.ADAPTER,
    dataset: Optional[str] = mo.DATASET,
) -> None:
    """Pathway IoU between the MoE model's per-input channels and a Sparse model's mask (or, for your own
    MoE, between each input's expert pathway and the majority pathway); expert utilisation."""
    from ..analysis.iou import iou_analysis, majority_iou_analysis, match_layers, plot_iou, plot_utilisation
    from ..checkpoint import load_checkpoint

    opts = mo.ModelOptions(model, model_arg, weights, weights_key, output_key, normalize, input_size, router_modules,
                           router_top_k, router_forcing, adapter, dataset)
    opts.check(ckpt)
    if ckpt is None and mask is not None:
        raise ConfigError("--mask needs a robustmoe-bench MoE checkpoint; with --model, leave it out "
                          "(pathways are compared with the model's majority pathway)")
    net, data_name = _moe_model(ckpt, opts, "pathway IoU")
    full_copy = getattr(getattr(net, "spec", None), "moe", "channel") != "channel"
    if full_copy and mask is not None:
        raise ConfigError(f"--mask compares channel pathways with a Sparse model's mask; the experts of "
                          f"{net.spec.describe()} are full copies: leave --mask out (majority pathway)")
    if ckpt is not None and mask is None and not full_copy:
        raise ConfigError("iou of a checkpoint needs --mask (a Sparse checkpoint of the same backbone)")
    label = mo.model_label(ckpt, opts)
    if mask is not None:
        sparse = load_checkpoint(mask).model
        match_layers(net, sparse)  # fail on a mismatch before loading data or attacking
    x, y = _load_examples(data_name, split, n_examples, seed, data_root)
    if mask is not None:
        res = iou_analysis(net, sparse, x, y, attack=attack, eps=_eps(eps), seed=seed, batch_size=batch_size)
        res.checkpoint, res.mask_checkpoint = str(ckpt), str(mask)
    else:
        res = majority_iou_analysis(net, x, y, attack=attack, eps=_eps(eps), seed=seed, batch_size=batch_size)
    plot_iou(res, out / "iou.png")
    plot_utilisation(res, out / "utilisation.png")
    res.save(out / "iou.json")

    ref = f"mask of {mask.name}" if mask is not None else "its majority pathway (units: experts)"
    t = Table(title=f"Pathway IoU of {escape(label)} vs {escape(ref)} ({res.n_examples} examples)")
    t.add_column("inputs")
    for k in ("mean", "std", "min", "median", "max"):
        t.add_column(k, justify="right")
    t.add_column("mean routing entropy (bits)", justify="right")
    t.add_column("busiest expert (share of inputs, max over layers)", justify="right")
    for key in ("clean", "adversarial"):
        s = res.summary[key]
        u_ = res.utilisation[key]
        t.add_row(key, *(f"{s[k]:.4f}" for k in ("mean", "std", "min", "median", "max")),
                  f"{u_.mean_entropy_bits:.3f} / {res.max_entropy_bits:.3f}",
                  f"{100 * max(u_.busiest_share or [0.0]):.1f}%")
    console.print(t)
    u = Table(title="Expert utilisation (% of inputs per expert; clean -> adversarial)")
    u.add_column("MoE layer")
    for e in range(res.experts):
        u.add_column(f"expert {e}", justify="right")
    for i, name in enumerate(res.layers):
        c, a = res.utilisation["clean"].share[i], res.utilisation["adversarial"].share[i]
        u.add_row(escape(name), *(f"{100 * c[e]:.1f} -> {100 * a[e]:.1f}" for e in range(res.experts)))
    console.print(u)
    if res.utilisation["clean"].collapsed:
        console.print("[bold red]routing COLLAPSED[/] on the clean inputs (some MoE layer sends >= 99 % of them to one "
                      "expert): every input takes (almost) the same pathway there, so the IoU spread measures nothing",
                      highlight=False)
    if res.clean_vs_adversarial is not None:
        m = sum(res.clean_vs_adversarial) / len(res.clean_vs_adversarial)
        console.print(f"mean IoU of each input's clean and adversarial pathway: {m:.4f}")
    console.print(f"routing changed by the attack on {res.routing_change_rate:.2f}% of inputs; "
                  f"wrote {out / 'iou.json'}, {out / 'iou.png'}, {out / 'utilisation.png'}", markup=False)


def _overrides(items: list[str]) -> dict:
    """``--set key=value`` pairs; values read as JSON where they parse (numbers, true/false), else text."""
    import json

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set needs key=value, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


@app.command("sweep")
def sweep_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for the cells, sweep.json, sweep.md and sweep.png."),
    experts: str = typer.Option("2,4,8", "--experts", help="Expert counts N, comma-separated (each >= 2)."),
    scale: str = typer.Option("0.2,0.5,0.8", "--scale", help="Model scales r, comma-separated (each in (0, 1])."),
    method: str = typer.Option("advmoe", "--method", help="MoE training method: advmoe or at-moe."),
    preset: str = typer.Option("fmnist-mini", "--preset", help="Training preset every cell starts from."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Override the preset's architecture."),
    router: Optional[str] = typer.Option(None, "--router", help="Router design: layer or shared."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the preset's epochs."),
    subset: Optional[int] = typer.Option(None, "--subset", help="Training examples (seeded subset)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Training batch size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda[:i]."),
    sets: list[str] = typer.Option([], "--set", help="Any other training option as key=value (repeatable)."),
    suite: str = typer.Option("quick", "--suite", help="Evaluation suite per cell (quick = PGD-20)."),
    n_examples: int = typer.Option(1000, "--n-examples", help="Test examples per evaluation."),
    seed: int = typer.Option(0, "--seed", help="Seed of training and of the evaluation subset."),
    no_dense: bool = typer.Option(False, "--no-dense", help="Skip the Dense (at-dense) reference."),
    design: str = typer.Option("channel", "--design", help="Expert designs, comma-separated: channel (N x r grid), conv, block (N x k grid)."),
    k: str = typer.Option("1", "--k", help="conv/block designs: experts per input k, comma-separated (cells with k > N are left out)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the data set."),
) -> None:
    """Train and evaluate every (experts, scale) cell; resumes, skipping finished cells."""
    from ..analysis.sweep import SweepConfig, parse_designs, parse_experts, parse_ks, parse_scales, run_sweep

    overrides = _overrides(sets)
    for key, value in (("arch", arch), ("router", router), ("epochs", epochs), ("subset", subset),
                       ("batch_size", batch_size), ("lr", lr), ("device", device)):
        if value is not None:
            overrides[key] = value
    cfg = SweepConfig(
        experts=parse_experts(experts), scales=parse_scales(scale), method=method, preset=preset,
        train_overrides=overrides, suite=suite, n_examples=n_examples, seed=seed, dense_reference=not no_dense,
        data_root=None if data_root is None else str(data_root), designs=parse_designs(design), ks=parse_ks(k),
    )

    def on_cell(name: str, skipped: bool) -> None:
        console.print(f"cell {name}: {'already finished, skipped' if skipped else 'trained and evaluated'}")

    res = run_sweep(cfg, out, on_cell=on_cell)
    caption = (f"Dense reference ({res.dense.method}): {res.dense.robust_acc:.2f} / {res.dense.clean_acc:.2f}"
               if res.dense is not None else None)
    if "channel" in cfg.designs:
        t = Table(title=f"{method} sweep: worst-case robust / clean accuracy (%), suite {suite}")
        t.add_column("experts N \\ scale r")
        for r in cfg.scales:
            t.add_column(f"{r:g}", justify="right")
        for n in cfg.experts:
            t.add_row(str(n), *(f"{res.cell(n, r).robust_acc:.2f} / {res.cell(n, r).clean_acc:.2f}" for r in cfg.scales))
        t.caption = caption
        console.print(t)
    rows = res.topk_rows()
    if rows:
        t = Table(title=f"{method} sweep, full-copy experts: worst-case robust / clean accuracy (%), suite {suite}")
        t.add_column("design, experts N \\ k")
        for kk in cfg.ks:
            t.add_column(str(kk), justify="right")
        for d, n, cells in rows:
            t.add_row(f"{d}, {n}", *("-" if c is None else f"{c.robust_acc:.2f} / {c.clean_acc:.2f}" for c in cells))
        t.caption = caption
        console.print(t)
    console.print(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}, {out / 'sweep.png'}", markup=False)
