"""Write leaderboard entries to ``<root>/<dataset>/<threat_model>/<ModelID>.json``.

Publication is atomic and race-free: the entry is written in full to a temporary file in the target
folder, then put in place with ``os.link`` (which fails if the name exists, so of two publishers of
the same ID exactly one wins, without a check-then-write window) or, with ``force``, ``os.replace``.
A reader never sees a half-written entry, and publishers of different IDs never interfere.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

from .entry import LeaderboardEntry, LeaderboardError, check_link, check_name, entry_from_results
from .validate import entry_problems
from .. import jsonsafe

#: Default leaderboard root (relative to the working directory).
DEFAULT_ROOT = Path("leaderboards")


def entry_json(entry: LeaderboardEntry) -> str:
    """The file content: RobustBench writes ``json.dumps(entry, indent=2)``, and so do we."""
    return json.dumps(entry.to_json_dict(), indent=2)


def entry_path(root: str | os.PathLike[str], entry: LeaderboardEntry, model_id: str) -> Path:
    """Where ``entry`` is stored under ``root`` (``model_id`` checked to stay inside its folder)."""
    check_name(model_id, "model ID")
    return Path(root) / entry.dataset.value / entry.threat_model.value / f"{model_id}.json"


def _link_into_place(tmp: Path, target: Path) -> None:
    """Publish ``tmp`` as ``target`` unless ``target`` exists (atomic no-overwrite)."""
    try:
        os.link(tmp, target)
        return
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
    # Filesystems without hard links: reserve the name exclusively, then fill it. The name is taken
    # atomically; the content appears a moment later (documented trade-off of this fallback only).
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(tmp.read_bytes())
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def publish_entry(
    entry: LeaderboardEntry,
    model_id: str,
    root: str | os.PathLike[str] = DEFAULT_ROOT,
    *,
    force: bool = False,
) -> Path:
    """Write ``entry`` as ``<root>/<dataset>/<threat_model>/<model_id>.json``; returns the path.

    Refuses an existing entry unless ``force``; the entry is checked against the schema first."""
    target = entry_path(root, entry, model_id)
    text = entry_json(entry)
    problems = entry_problems(json.loads(text), dataset=entry.dataset.value, threat_model=entry.threat_model.value)
    if problems:
        raise LeaderboardError(f"entry {model_id!r} would be invalid: {'; '.join(problems)}")
    if target.exists() and not force:
        raise LeaderboardError(f"entry {target} already exists; pass --force to replace it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LeaderboardError(f"cannot create {target.parent}: {e}") from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model_id}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        if force:
            os.replace(tmp, target)
        else:
            try:
                _link_into_place(tmp, target)
            except FileExistsError:
                raise LeaderboardError(
                    f"entry {target} already exists (published concurrently); pass --force to replace it"
                ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an evaluation results JSON file (``robustmoe-bench evaluate --out``)."""
    path = Path(path)
    try:
        data = jsonsafe.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LeaderboardError(f"results file not found: {path}") from None
    except IsADirectoryError:
        raise LeaderboardError(f"{path} is a folder, not a results JSON file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LeaderboardError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise LeaderboardError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(data, dict):
        raise LeaderboardError(f"{path}: expected a JSON object (evaluation results)")
    return data


def publish_results(
    results: str | os.PathLike[str] | Mapping[str, Any],
    model_id: str,
    root: str | os.PathLike[str] = DEFAULT_ROOT,
    *,
    title: Optional[str] = None,
    force: bool = False,
    corruptions: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    **metadata: Any,
) -> tuple[Path, LeaderboardEntry]:
    """Build an entry from evaluation results (a path or a dict) and publish it.

    ``title`` is RobustBench's ``name`` (the paper title; defaults to ``model_id``); ``metadata`` are
    the other keyword arguments of :func:`~robustmoe_bench.leaderboard.entry.entry_from_results`
    (``link``, ``authors``, ``venue``, ``architecture``, ``reported``, ``footnote``, ...)."""
    check_name(model_id, "model ID")
    check_link(metadata.get("link", ""))
    data = read_results(results) if not isinstance(results, Mapping) else results
    corr = None
    if corruptions is not None:
        corr = read_results(corruptions) if not isinstance(corruptions, Mapping) else corruptions
    entry = entry_from_results(data, title=title or model_id, corruptions=corr, **metadata)
    return publish_entry(entry, model_id, root, force=force), entry
