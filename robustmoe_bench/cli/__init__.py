"""Command-line interface: ``robustmoe-bench COMMAND``. Thin: parse, call the library, print.

Each module below registers its commands on the shared typer ``app`` when imported.
"""
from __future__ import annotations

from importlib import import_module

from .app import app, main, run

# One module per area; importing a module registers its commands.
COMMAND_MODULES = [
    "models_cmd",
    "analysis_cmd",
    "evaluate_cmd",
    "leaderboard_cmd",
    "zoo_cmd",
    "train_cmd",
    "pipeline_cmd",
    "flops_cmd", "compare_cmd",
    "convert_cmd",
    "reproduce_cmd",
    "experts_cmd",
]

for _name in COMMAND_MODULES:
    import_module(f"{__name__}.{_name}")

__all__ = ["app", "main", "run"]
