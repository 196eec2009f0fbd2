"""``leaderboard publish | validate | build``: RobustBench-format entries from evaluation results."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..leaderboard import DEFAULT_ROOT, LeaderboardError, build, publish_results, validate_root
from .app import app, console, err_console

leaderboard_app = typer.Typer(
    help="Publish, validate and render leaderboard entries (RobustBench's format plus MoE extras).",
    no_args_is_help=True,
)
app.add_typer(leaderboard_app, name="leaderboard")

ROOT_HELP = "Leaderboard root: entries live at ROOT/<dataset>/<threat_model>/<name>.json."


@leaderboard_app.command("publish")
def publish_cmd(
    results: Path = typer.Argument(..., help="Evaluation results JSON (robustmoe-bench evaluate --out)."),
    name: str = typer.Option(..., "--name", help="Model ID: the entry's file name (letters, digits, _ - .)."),
    title: Optional[str] = typer.Option(None, "--title", help="Paper title (RobustBench's 'name' key); default: the model ID."),
    link: str = typer.Option("", "--link", help="URL of the paper or code."),
    authors: str = typer.Option("", "--authors", help="Authors, comma-separated."),
    venue: str = typer.Option("N/A", "--venue", help="Venue and year, e.g. 'ICCV 2023'."),
    architecture: Optional[str] = typer.Option(None, "--architecture", help="Architecture string; default: from the model spec."),
    reported: Optional[float] = typer.Option(None, "--reported", help="Robust accuracy (%) the authors reported; default: the suite's worst case."),
    footnote: Optional[str] = typer.Option(None, "--footnote", help="Footnote shown under the table."),
    additional_data: bool = typer.Option(False, "--additional-data", help="Trained with data beyond the training set."),
    forward_passes: int = typer.Option(1, "--forward-passes", min=1, help="Forward passes per prediction."),
    root: Path = typer.Option(DEFAULT_ROOT, "--root", help=ROOT_HELP),
    force: bool = typer.Option(False, "--force", help="Replace an existing entry of the same name."),
    corruptions: Optional[Path] = typer.Option(None, "--corruptions", help="Results of 'evaluate --suite corruptions' of the same checkpoint: adds corruptions_acc to the entry."),
) -> None:
    """Write one entry from evaluation results (which must include AutoAttack; or corruption results,
    which give an entry under <dataset>/corruptions)."""
    path, entry = publish_results(
        results, name, root, title=title, force=force, corruptions=corruptions, link=link, authors=authors, venue=venue,
        architecture=architecture, reported=reported, footnote=footnote, additional_data=additional_data,
        number_forward_passes=forward_passes,
    )
    ext = f", external {entry.external:.2f}%" if entry.external is not None else ""
    warn = " [bold yellow](unreliable: gradient-masking checks failed)[/]" if entry.unreliable else ""
    n = f" on {entry.extras.n_examples} examples" if entry.extras is not None else ""
    corr = entry.corruptions.get("corruptions_acc")
    aa = f", AutoAttack {entry.autoattack_acc:.2f}%" if entry.autoattack_acc is not None else ""
    cc = f", corruptions {corr:.2f}%" if corr is not None else ""
    console.print(
        f"wrote {escape(str(path))}: clean {entry.clean_acc:.2f}%{aa}{cc}{ext}{n}{warn}",
        highlight=False, soft_wrap=True,
    )


@leaderboard_app.command("validate")
def validate_cmd(root: Path = typer.Option(DEFAULT_ROOT, "--root", help=ROOT_HELP)) -> None:
    """Check every entry against the shipped JSON schema; list each problem with its file."""
    n, found = validate_root(root)
    for p in found:
        err_console.print(str(p), highlight=False, soft_wrap=True, markup=False)
    problems = [p for p in found if not p.warning]
    if problems:
        files = len({p.path for p in problems})
        raise LeaderboardError(f"{len(problems)} problem(s) in {files} file(s) under {root} ({n} entries checked)")
    warned = f" ({len(found)} warning(s))" if found else ""
    console.print(f"{n} entr{'y' if n == 1 else 'ies'} under {root}: all valid{warned}", highlight=False,
                  soft_wrap=True, markup=False)


@leaderboard_app.command("build")
def build_cmd(root: Path = typer.Option(DEFAULT_ROOT, "--root", help=ROOT_HELP)) -> None:
    """Write ROOT/README.md and ROOT/index.html: one ranked table per data set and threat model."""
    paths, board, found = build(root)
    for p in found:
        err_console.print(str(p), highlight=False, soft_wrap=True, markup=False)
    n = sum(len(rows) for rows in board.values())
    left_out = len({p.path for p in found if not p.warning})
    skipped = f"; left out {left_out} file(s) with problems (listed above)" if left_out else ""
    console.print(f"wrote {', '.join(str(p) for p in paths)} ({n} entries in {len(board)} tables{skipped})",
                  highlight=False, soft_wrap=True, markup=False)
