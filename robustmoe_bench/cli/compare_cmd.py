"""``compare``: one table over several evaluation results files (the paper's Table 1 layout)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

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
    console.print(table.to_rich(console.width))
    if markdown is not None:
        atomic_write_bytes(markdown, table.to_markdown().encode("utf-8"))
        console.print(f"wrote {markdown}", markup=False, highlight=False)
