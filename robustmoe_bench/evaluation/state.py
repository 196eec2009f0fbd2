"""Per-batch records and the resumable state folder of an evaluation.

An evaluation is a sequence of batches (batch ``i`` = examples ``i*B .. (i+1)*B-1`` of the evaluation
set). After each batch its :class:`BatchRecord` -- clean correctness, what each attack broke, routing
changes, timings -- is written atomically to ``<out>.state/batch-<i>.json``; ``meta.json`` holds a
fingerprint of the settings so a resume with different settings is refused. A run killed at any point
leaves only complete files (temp + rename), so ``--resume`` reloads every finished batch and computes
the rest; each batch's attack seeds depend only on ``(seed, batch index)``, so the result is the same
as an uninterrupted run. The folder is deleted once the results file is written.

While an evaluation writes ``<out>`` it holds an exclusive lock on ``<out>.lock`` (:func:`output_lock`): a
second evaluation to the same output stops with a clear error instead of resetting or mixing the first
one's state.

Masks are stored as strings of ``0``/``1`` (one character per example of the batch): small, exact and
readable.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..checkpoint import atomic_write_bytes
from ..config import from_dict
from ..errors import ConfigError
from .. import jsonsafe

STATE_FORMAT = "robustmoe-bench/eval-state"
STATE_VERSION = 1
_BATCH_FILE = re.compile(r"^batch-(\d+)\.json$")


def mask_to_str(mask: torch.Tensor) -> str:
    """``[B]`` bool -> ``"0110..."``."""
    return "".join("1" if b else "0" for b in mask.to(torch.bool).tolist())


def str_to_mask(s: str) -> torch.Tensor:
    """``"0110..."`` -> ``[B]`` bool."""
    return torch.tensor([c == "1" for c in s], dtype=torch.bool)


@dataclass
class AttackRecord:
    """One attack on one batch. ``broken``: examples of the batch this attack newly broke (they were
    still robust before it); ``n_attacked``: examples it ran on; ``routing_changed``: attacked examples
    whose expert choice changed in >= 1 MoE layer vs clean (0 for non-MoE models); ``fooled``: examples
    it ran on and misclassified (whether or not an earlier attack had broken them), from which an
    attack's accuracy alone is computed where it ran on every example that number needs."""

    broken: str
    n_attacked: int
    routing_changed: int
    seconds: float
    fooled: str = ""


@dataclass
class BatchRecord:
    """Everything the final result needs from one batch. ``clean``: correct-on-clean mask."""

    index: int
    n: int
    clean: str
    attacks: dict[str, AttackRecord]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BatchRecord":
        d = dict(d)
        d["attacks"] = {k: from_dict(AttackRecord, v, what="attack record") for k, v in d["attacks"].items()}
        return from_dict(cls, d, what="batch record")


@dataclass
class StateFolder:
    """The ``<out>.state`` folder of one run (see module docstring)."""

    path: Path
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # compare in JSON form (tuples become lists on disk); sort_keys for a stable order
        self.fingerprint = json.loads(json.dumps(self.fingerprint, sort_keys=True))

    @staticmethod
    def for_output(out: str | os.PathLike[str]) -> Path:
        return Path(str(out) + ".state")

    def prepare(self, resume: bool) -> None:
        """Create the folder. Without ``resume`` any previous state is discarded; with it, a state
        written under different settings is an error (mixing them would give wrong numbers)."""
        meta_path = self.path / "meta.json"
        if resume and meta_path.exists():
            try:
                meta = jsonsafe.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                raise ConfigError(f"cannot resume: {meta_path} is unreadable; rerun without --resume") from None
            old = meta.get("fingerprint")
            if meta.get("format") != STATE_FORMAT or old != self.fingerprint:
                diff = sorted(k for k in set(self.fingerprint) | set(old or {})
                              if (old or {}).get(k) != self.fingerprint.get(k))
                raise ConfigError(
                    f"cannot resume from {self.path}: it was written with different settings "
                    f"({', '.join(diff) or 'format'}); rerun without --resume to start over"
                )
            return
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        meta = {"format": STATE_FORMAT, "format_version": STATE_VERSION, "fingerprint": self.fingerprint}
        atomic_write_bytes(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())

    def load_batches(self) -> dict[int, BatchRecord]:
        """Every complete batch record in the folder, by batch index."""
        out: dict[int, BatchRecord] = {}
        if not self.path.is_dir():
            return out
        for p in sorted(self.path.iterdir()):
            m = _BATCH_FILE.match(p.name)
            if not m:
                continue
            try:
                rec = BatchRecord.from_dict(jsonsafe.loads(p.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError, KeyError, TypeError, ConfigError):
                continue  # unreadable records are recomputed, never trusted
            if rec.index == int(m.group(1)):
                out[rec.index] = rec
        return out

    def save_batch(self, rec: BatchRecord) -> None:
        atomic_write_bytes(self.path / f"batch-{rec.index:06d}.json", json.dumps(rec.to_dict()).encode())

    def load_extra(self, name: str) -> Optional[dict[str, Any]]:
        """A saved non-batch section (``checks``), or ``None``."""
        p = self.path / f"{name}.json"
        try:
            return jsonsafe.loads(p.read_text(encoding="utf-8")) if p.exists() else None
        except (OSError, json.JSONDecodeError):
            return None

    def save_extra(self, name: str, data: dict[str, Any]) -> None:
        atomic_write_bytes(self.path / f"{name}.json", json.dumps(data, sort_keys=True).encode())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@contextmanager
def output_lock(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive, non-blocking lock on ``<out>.lock`` for the block; the file is removed after.

    Raises :class:`ConfigError` when another process holds it. The lock file is unlinked while locked, so
    a process that opened the old file meanwhile notices (different inode) and retries on a new one."""
    import fcntl

    path = Path(str(out) + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)  # as the state folder next to it would be
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot create the lock file {path}: {e.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"another evaluation is writing {out} (it holds {path}); wait for it to "
                                  "finish or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue  # the holder finished and removed the file while we opened it: lock a new one
            try:
                yield path
            finally:
                path.unlink(missing_ok=True)
            return
        finally:
            os.close(fd)


__all__ = ["AttackRecord", "BatchRecord", "StateFolder", "mask_to_str", "str_to_mask", "output_lock"]
