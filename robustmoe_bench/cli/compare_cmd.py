"""``compare``: one table over several evaluation results files (the paper's Table 1 layout)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..analysis.compare import compare_results
from ..checkpoint import atomic_write_bytes
from .app import app, console


@app.command("compare")
def compare_cmd(
    results: List[Path] = typer.Argument(..., help="Evaluation results JSON files (robustmoe-bench evaluate --out)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the table as Markdown here."),
) -> None:
    """Compare models: clean and robust accuracy per attack, worst case, GFLOPs and saving vs Dense."""
    table = compare_results(list(results))
    t = Table(title="Model comparison (accuracy in %, worst case = per-example over every attack run)")
    for i, h in enumerate(table.headers()):
        t.add_column(h, justify="left" if i < 5 else "right", style="bold" if i == 0 else None)
    for row in table.cells():
        t.add_row(*row)
    console.print(t)
    if markdown is not None:
        atomic_write_bytes(markdown, table.to_markdown().encode("utf-8"))
        console.print(f"wrote {markdown}")
