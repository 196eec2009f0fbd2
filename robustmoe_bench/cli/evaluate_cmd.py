"""``evaluate``: run an attack suite on a checkpoint, print a table, write the results JSON."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ConfigError
from ..evaluation import DEFAULT_BATCH_SIZE, SUITES, EvalResult, evaluate
from . import model_options as mo
from .app import app, console


def _ci(res: EvalResult, section: str, key: str | None, value: float | None) -> str:
    """``"57.50 [50.6, 64.1]"`` from the result's intervals (older results: the number alone)."""
    if value is None:
        return ""
    iv = res.intervals.get(section) if res.intervals else None
    if isinstance(iv, dict) and key is not None:
        iv = iv.get(key)
    if isinstance(iv, dict) and "low" in iv:
        return f"{value:.2f} [{iv['low']:.1f}, {iv['high']:.1f}]"
    return f"{value:.2f}"


def results_table(res: EvalResult) -> Table:
    """attack | robust acc in the cascade [95 % CI] | alone [95 % CI] | routing change | attacked |
    seconds, the worst case in bold (flags: see :func:`flag_lines`)."""
    of = f" of {res.n_total}" if res.n_total and res.n_total != res.n_examples else ""
    t = Table(title=f"{res.suite} suite on {res.dataset} ({res.threat_model}, eps={res.eps_str}, "
                    f"n={res.n_examples}{of}); accuracy % [95% Wilson interval]")
    t.add_column("attack", style="bold")
    t.add_column("cascade", justify="right", no_wrap=True)
    t.add_column("alone", justify="right", no_wrap=True)
    t.add_column("routing change %", justify="right", max_width=9)
    t.add_column("attacked", justify="right")
    t.add_column("seconds", justify="right")
    t.add_row("clean", _ci(res, "clean_acc", None, res.clean_acc), "", "", "", "")
    for a in res.attacks:
        if a.skipped is not None:
            t.add_row(escape(a.name), "[dim]skipped[/]", "", "", "", "[dim]see below[/]")  # the reason: under the table
            continue
        change = "" if a.routing_change is None else f"{a.routing_change:.2f}"
        t.add_row(escape(a.name), _ci(res, "robust_acc", a.name, a.robust_acc),
                  _ci(res, "robust_acc_alone", a.name, a.robust_acc_alone), change, str(a.n_attacked),
                  f"{a.seconds:.1f}")
    groups = [g for g in res.robust_acc_alone if g not in {a.name for a in res.attacks}]
    for g in groups:
        t.add_row(f"{escape(g)} (group)", _ci(res, "robust_acc", g, res.robust_acc.get(g)),
                  _ci(res, "robust_acc_alone", g, res.robust_acc_alone[g]), "", "", "")
    t.add_row("[bold]worst case[/]", f"[bold]{_ci(res, 'robust_acc', 'worst_case', res.worst_case)}[/]", "", "", "",
              f"{res.seconds:.1f}")
    skipped = [a.name for a in res.attacks if a.skipped is not None]
    captions = []
    if skipped:  # never silently fewer attacks: say what the worst case covers
        captions.append(f"worst case over {len(res.attacks) - len(skipped)} of {len(res.attacks)} attacks; "
                        f"skipped: {escape(', '.join(skipped))} (reasons below)")
    if res.estimate:
        captions.append("ESTIMATE of AutoAttack's figure (screening), not a measurement: "
                        "not for the leaderboard or the zoo")
    if captions:
        t.caption = "\n".join(captions)
    return t


def flag_lines(res: EvalResult) -> list[str]:
    """One line per gradient-masking check: ✓/✗, its name and its evidence (rich markup)."""
    return [f"{'[green]✓[/]' if f['passed'] else '[bold red]✗[/]'} [bold]{escape(name)}[/]: {escape(str(f['evidence']))}"
            for name, f in res.flags.items()]


@app.command("evaluate")
def evaluate_cmd(
    ckpt: Optional[Path] = typer.Argument(None, help="A robustmoe-bench checkpoint (.safetensors); or use --model."),
    suite: str = typer.Option("full", "--suite", "-s", help=f"Attack suite: {', '.join(SUITES.names())}; or corruptions (15 common corruptions x 5 severities)."),
    n_examples: Optional[int] = typer.Option(None, "--n-examples", "-n", help="Examples (a seeded subset); default all."),
    eps: Optional[str] = typer.Option(None, "--eps", help="Radius, e.g. 8/255 or 0.1; default: the data set's."),
    norm: str = typer.Option("Linf", "--norm", help="Threat model: Linf or L2."),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", "-b", help="Examples per batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subset and of every attack."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder of the data set's files."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results JSON (written atomically)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from <out>.state after an interruption."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    autoattack: str = typer.Option("reference", "--autoattack", help="How AutoAttack runs: fast (the same decisions, "
                                   "less work) or reference (pyautoattack's run_standard_evaluation)."),
    corruptions: Optional[str] = typer.Option(None, "--corruptions", help="--suite corruptions: a comma-separated subset (default: all 15)."),
    severities: Optional[str] = typer.Option(None, "--severities", help="--suite corruptions: comma-separated severities (default 1-5)."),
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
    """Evaluate robustness: per-example worst case over a suite of attacks, with gradient-masking flags;
    or, with --suite corruptions, accuracy under common corruptions."""
    import os

    opts = mo.ModelOptions(model, model_arg, weights, weights_key, output_key, normalize, input_size, router_modules,
                           router_top_k, router_forcing, adapter, dataset)
    opts.check(ckpt)
    if out is not None and out.is_dir():  # before building a model: cheap checks first
        raise ConfigError(f"--out {out} is a folder; give a file name such as results.json")
    if suite == "corruptions":
        _corruptions(ckpt if ckpt is not None else opts.load(), n_examples, eps, norm, batch_size, seed, data_root,
                     out, resume, device, quiet, corruptions, severities)
        return
    if corruptions is not None or severities is not None:
        raise ConfigError("--corruptions and --severities are options of --suite corruptions")
    res = evaluate(
        ckpt if ckpt is not None else opts.load(), suite=suite, n_examples=n_examples, eps=eps, norm=norm, batch_size=batch_size, seed=seed,
        data_root=data_root, out=out, resume=resume, device=device, progress=not quiet, autoattack=autoattack,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 reports
    console.print(results_table(res))
    for line in flag_lines(res):
        console.print(line, highlight=False)
    for a in res.attacks:
        if a.skipped is not None:
            console.print(f"[yellow]skipped[/] [bold]{escape(a.name)}[/]: {escape(a.skipped)}", highlight=False)
    if any(a.skipped is not None for a in res.attacks):
        console.print(f"worst case over: {escape(', '.join(res.worst_case_attacks))}", highlight=False)
    if res.unreliable:
        console.print("[bold red]unreliable:[/] a gradient-masking check failed; the numbers above may overstate robustness")
    line = expert_use_line(res)
    if line:
        console.print(line, highlight=False)
    if out is not None:
        console.print(f"results written to {out}", markup=False, highlight=False)


def expert_use_line(res: EvalResult) -> str:
    """The routing health of a routed model's evaluation (rich markup), or "" without routing."""
    if not res.expert_use:
        return ""
    from ..adapters.expert_use import ExpertUse

    use = ExpertUse.from_dict(res.expert_use)
    if use.collapsed:
        return (f"[bold red]routing {escape(use.mark())}[/]: {escape(use.summary())}; the routing-change rates and "
                "router robustness above describe a router that cannot change")
    return f"[green]routing[/]: {escape(use.summary())}"


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag}: give comma-separated integers, got {text!r}") from None


def corruption_table(res) -> Table:
    """Corruption x severity accuracy (%), with per-corruption means and the overall mean."""
    t = Table(title=f"common corruptions on {res.dataset} (n={res.n_examples}); accuracy %, "
                    f"clean {res.clean_acc:.2f}, mean {res.corruptions_acc:.2f}")
    t.add_column("corruption", style="bold", no_wrap=True)
    for s in res.severities:
        t.add_column(f"s{s}", justify="right")
    t.add_column("mean", justify="right")
    if res.routing_change is not None:
        t.add_column("routing change % (mean)", justify="right")
    for c in res.corruptions:
        row = [f"{res.accuracy[c][str(s)]:.2f}" for s in res.severities] + [f"{res.by_corruption[c]:.2f}"]
        if res.routing_change is not None:
            row.append(f"{sum(res.routing_change[c].values()) / len(res.severities):.2f}")
        t.add_row(c, *row)
    t.add_row("[bold]mean[/]", *(f"{res.by_severity[str(s)]:.2f}" for s in res.severities),
              f"[bold]{res.corruptions_acc:.2f}[/]",
              *([f"{res.routing_change_mean:.2f}"] if res.routing_change_mean is not None else []))
    return t


def _corruptions(ckpt, n_examples, eps, norm, batch_size, seed, data_root, out, resume, device, quiet,
                 corruptions, severities) -> None:
    from ..evaluation.corruptions import DEFAULT_BATCH, evaluate_corruptions

    if eps is not None or norm != "Linf":
        raise ConfigError("--eps and --norm do not apply to --suite corruptions (no attack radius)")
    if resume:
        raise ConfigError("--resume does not apply to --suite corruptions (it runs in one go)")
    res = evaluate_corruptions(
        str(ckpt) if isinstance(ckpt, Path) else ckpt, n_examples=n_examples, seed=seed, data_root=data_root,
        batch_size=DEFAULT_BATCH if batch_size == DEFAULT_BATCH_SIZE else batch_size, device=device,
        corruptions=None if corruptions is None else [c.strip() for c in corruptions.split(",")],
        severities=None if severities is None else _int_list(severities, "--severities"),
        out=out, progress=not quiet,
    )
    console.print(corruption_table(res))
    if out is not None:
        console.print(f"results written to {out}", markup=False, highlight=False)
