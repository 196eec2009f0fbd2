"""Check leaderboard entries: the JSON schema shipped in the package, then what a schema cannot say
(the file's folders agree with its ``dataset``, ``external`` is not above ``autoattack_acc``, ...).

Every problem is reported with its file; nothing stops at the first one."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping

from .entry import (
    EXTRA_PREFIX,
    BenchmarkDataset,
    LeaderboardEntry,
    LeaderboardError,
    ThreatModel,
    check_name,
    link_problem,
)
from .. import jsonsafe

SCHEMA_RESOURCE = "schema.json"


@dataclass(frozen=True)
class Problem:
    """One problem with one file (``path`` as found under the root). ``warning``: worth reading, but the
    entry is still valid (e.g. a RobustBench file whose ``dataset`` disagrees with its folder, as a few
    of RobustBench's own files do)."""

    path: Path
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {'warning: ' if self.warning else ''}{self.message}"


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The entry JSON schema shipped with the package (``robustmoe_bench/leaderboard/schema.json``)."""
    text = resources.files(__package__).joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_problems(d: Any) -> list[str]:
    """Schema violations of one entry dict, as readable lines sorted by where they occur."""
    out = []
    for err in sorted(_validator().iter_errors(d), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(p) for p in err.absolute_path)
        out.append(f"{where}: {err.message}" if where else err.message)
    return out


def entry_problems(d: Any, *, dataset: str | None = None, threat_model: str | None = None) -> list[str]:
    """Everything wrong with one entry dict. ``dataset``/``threat_model`` are the folder names it was
    found in (checked against the entry when given)."""
    problems = schema_problems(d)
    if not isinstance(d, Mapping):
        return problems
    ours = any(k.startswith(EXTRA_PREFIX) for k in d)
    # Our entries must sit in their data set's folder; RobustBench's own files do not always (a warning).
    if ours and dataset is not None and d.get("dataset") != dataset:
        problems.append(f"dataset {d.get('dataset')!r} does not match its folder {dataset!r}")
    if ours and EXTRA_PREFIX + "extras_version" not in d:
        problems.append(f"has {EXTRA_PREFIX}* keys but no {EXTRA_PREFIX}extras_version")
    problem = link_problem(d.get("link", ""))
    if problem:
        problems.append(problem)
    if threat_model is not None:
        if threat_model == ThreatModel.corruptions.value:
            if "corruptions_acc" not in d:
                problems.append("'corruptions_acc' is a required property of a corruptions entry")
        else:
            if "autoattack_acc" not in d:
                problems.append(f"'autoattack_acc' is a required property of a {threat_model} entry")
            if d.get("eps") is None:
                problems.append(f"eps: a {threat_model} entry needs a radius such as '8/255', got null")
    if problems or threat_model is None:
        return problems
    # The schema holds; now the cross-field rules, on the typed entry.
    try:
        entry = LeaderboardEntry.from_json_dict(d, threat_model)
    except LeaderboardError as e:
        return [str(e)]
    if entry.autoattack_acc is None:  # a corruptions entry: nothing below applies
        return problems
    if entry.autoattack_acc > entry.clean_acc:
        problems.append(f"autoattack_acc {d['autoattack_acc']} is above clean_acc {d['clean_acc']}")
    if entry.external is not None and entry.external > entry.autoattack_acc:
        problems.append(
            f"external {d['external']} is above autoattack_acc {d['autoattack_acc']} "
            "(external must be a stronger, i.e. lower, evaluation)"
        )
    ex = entry.extras
    if ex is not None:
        if ex.worst_case_acc > entry.autoattack_acc:
            problems.append(
                f"{EXTRA_PREFIX}worst_case_acc {ex.worst_case_acc:.2f} is above autoattack_acc "
                f"{entry.autoattack_acc:.2f} (the worst case includes AutoAttack)"
            )
        if ex.failed_checks and not entry.unreliable:
            problems.append(
                f"gradient-masking checks failed ({', '.join(ex.failed_checks)}) but unreliable is false"
            )
        if ex.kind == "moe" and (ex.experts is None or ex.router is None):
            problems.append(f"an MoE entry needs {EXTRA_PREFIX}experts and {EXTRA_PREFIX}router")
    return problems


def entry_warnings(d: Any, *, dataset: str | None = None) -> list[str]:
    """What is worth a warning but does not make an entry invalid."""
    if not isinstance(d, Mapping):
        return []
    ours = any(k.startswith(EXTRA_PREFIX) for k in d)
    if not ours and dataset is not None and d.get("dataset") != dataset:
        return [f"dataset {d.get('dataset')!r} does not match its folder {dataset!r} "
                "(kept: RobustBench's own files do this; the folder decides where it is listed)"]
    return []


def iter_entry_files(root: Path) -> Iterator[tuple[Path, str, str]]:
    """``(path, dataset_folder, threat_model_folder)`` for every ``*.json`` two levels under ``root``,
    sorted; hidden files (publishers' temporary files) are skipped."""
    if not root.is_dir():
        return
    for ds_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for tm_dir in sorted(p for p in ds_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(tm_dir.glob("*.json")):
                if not f.name.startswith("."):
                    yield f, ds_dir.name, tm_dir.name


def read_entry_file(path: Path) -> Any:
    """Parse one entry file; unreadable or non-JSON files raise :class:`LeaderboardError`."""
    try:
        return jsonsafe.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise LeaderboardError(f"cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise LeaderboardError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def validate_root(root: str | os.PathLike[str]) -> tuple[int, list[Problem]]:
    """Check every entry under ``root``; returns ``(files checked, problems)`` (warnings among them
    have ``warning=True`` and do not make the root invalid).

    Besides each file's content: unknown data-set or threat-model folders, and file names that are not
    valid model IDs. A missing root raises :class:`LeaderboardError`."""
    root = Path(root)
    if not root.is_dir():
        raise LeaderboardError(f"leaderboard root {root} does not exist or is not a folder")
    problems: list[Problem] = []
    datasets = {m.value for m in BenchmarkDataset}
    threats = {m.value for m in ThreatModel}
    n = 0
    for ds_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if ds_dir.name not in datasets:
            problems.append(Problem(ds_dir, f"unknown data-set folder; known: {', '.join(sorted(datasets))}"))
        for tm_dir in sorted(p for p in ds_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if tm_dir.name not in threats:
                problems.append(Problem(tm_dir, f"unknown threat-model folder; known: {', '.join(sorted(threats))}"))
    for path, ds, tm in iter_entry_files(root):
        n += 1
        try:
            check_name(path.stem, "model ID (file name)")
        except LeaderboardError as e:
            problems.append(Problem(path, str(e)))
        try:
            d = read_entry_file(path)
        except LeaderboardError as e:
            problems.append(Problem(path, str(e)))
            continue
        known_tm = tm if tm in threats else None
        for msg in entry_problems(d, dataset=ds, threat_model=known_tm):
            problems.append(Problem(path, msg))
        for msg in entry_warnings(d, dataset=ds):
            problems.append(Problem(path, msg, warning=True))
    return n, problems
