"""Leaderboard entries in RobustBench's format: build them from evaluation results, publish them
atomically, validate them against the shipped schema, and render ranked tables.

``entry`` (typed entry + RobustBench strings at the JSON boundary), ``publish`` (race-free writes),
``validate`` (schema + cross-field checks), ``render`` (README.md / index.html).
"""
from __future__ import annotations

from .entry import (
    BenchmarkDataset,
    LeaderboardEntry,
    LeaderboardError,
    MoEExtras,
    ThreatModel,
    check_name,
    entry_from_results,
)
from .publish import DEFAULT_ROOT, entry_json, entry_path, publish_entry, publish_results, read_results
from .render import build, load_board, render_html, render_markdown
from .validate import Problem, entry_problems, load_schema, validate_root

__all__ = [
    "BenchmarkDataset", "DEFAULT_ROOT", "LeaderboardEntry", "LeaderboardError", "MoEExtras", "Problem",
    "ThreatModel", "build", "check_name", "entry_from_results", "entry_json", "entry_path", "entry_problems",
    "load_board", "load_schema", "publish_entry", "publish_results", "read_results", "render_html",
    "render_markdown", "validate_root",
]
