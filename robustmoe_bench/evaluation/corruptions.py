"""``evaluate --suite corruptions``: accuracy under the 15 common corruptions at 5 severities, applied on
the fly to the test set (:mod:`robustmoe_bench.data.corruptions`), with the MoE routing change they cause.

Results JSON (``suite: "corruptions"``, ``threat_model: "corruptions"`` as RobustBench names it)::

    {"schema_version": 1, "suite": "corruptions", "threat_model": "corruptions", "dataset": ...,
     "n_examples": 500, "n_total": 10000, "seed": 0, "clean_acc": 85.2,
     "corruptions_acc": 71.3,                       // mean over every corruption x severity (RobustBench's key)
     "accuracy": {"gaussian_noise": {"1": 80.2, ..., "5": 60.1}, ...},   // per corruption x severity, %
     "by_corruption": {"gaussian_noise": 70.4, ...},                     // mean over severities
     "by_severity": {"1": 80.0, ..., "5": 60.0},                         // mean over corruptions
     "routing_change": {"gaussian_noise": {"1": 12.5, ...}, ...} | null, // % of examples whose expert set
                                                                         // changed in >= 1 MoE layer vs clean
     "routing_change_mean": 20.1 | null,
     "intervals": {"clean_acc": {k, n, low, high}, "accuracy": {name: {sev: {k, n, low, high}}}},
     "corruptions": [...], "severities": [1, ..., 5], "implementation": "...",
     "seconds": ..., "model": {...}, "training": {...}, "checkpoint": ..., "checkpoint_sha256": ...,
     "package_version": ...}

Corrupted images are drawn with one generator per (corruption, severity, batch), seeded from ``seed``,
so a run is reproducible and independent of the batch order of other corruptions.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import atomic_write_bytes
from ..data.corruptions import CORRUPTION_NAMES, SEVERITIES, corrupt
from ..errors import CheckpointError, ConfigError, DataError, require_positive_int
from ..stats import wilson
from .suites import derive_seed

SCHEMA_VERSION = 1
IMPLEMENTATION = ("robustmoe-bench torch implementation of the 15 ImageNet-C corruptions with CIFAR-10-C "
                  "severity tables; procedural frost texture (see robustmoe_bench.data.corruptions)")
DEFAULT_BATCH = 250


@dataclass
class CorruptionResult:
    """Typed result of a corruption evaluation (see the module docstring for the JSON)."""

    dataset: str
    n_examples: int
    n_total: int
    seed: int
    clean_acc: float
    corruptions_acc: float
    accuracy: dict[str, dict[str, float]]
    by_corruption: dict[str, float]
    by_severity: dict[str, float]
    routing_change: Optional[dict[str, dict[str, float]]]
    routing_change_mean: Optional[float]
    intervals: dict[str, Any]
    corruptions: list[str]
    severities: list[int]
    seconds: float
    model: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None
    checkpoint_sha256: Optional[str] = None
    package_version: str = ""
    implementation: str = IMPLEMENTATION
    suite: str = "corruptions"
    threat_model: str = "corruptions"
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


def _routing_sets(model: torch.nn.Module, x: torch.Tensor, adapter: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(predictions ``[B]``, expert sets ``[L, B, k]`` through the routing adapter, or None without one)."""
    with torch.no_grad():
        if adapter is None:
            return model(x).argmax(1), None
        with adapter.trace() as tr:
            logits = model(x)
        return logits.argmax(1), tr.experts()


def evaluate_corruptions(
    model_or_ckpt: Any,
    n_examples: Optional[int] = None,
    seed: int = 0,
    data_root: str | os.PathLike[str] | None = None,
    batch_size: int = DEFAULT_BATCH,
    device: str = "cpu",
    corruptions: Optional[list[str]] = None,
    severities: Optional[list[int]] = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> CorruptionResult:
    """Accuracy of a checkpoint (path) or model under every corruption x severity; returns (and with
    ``out`` writes, atomically) the result. Bad input raises before anything is written."""
    from .. import __version__
    from ..data import as_tensors, get_dataset_info, load_dataset, subset_indices
    from .runner import _load_model

    names = list(CORRUPTION_NAMES if corruptions is None else corruptions)
    unknown = [c for c in names if c not in CORRUPTION_NAMES]
    if unknown or not names:
        raise ConfigError(f"unknown corruption(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(CORRUPTION_NAMES)}")
    sevs = list(SEVERITIES if severities is None else severities)
    if not sevs or any(s not in SEVERITIES for s in sevs):
        raise ConfigError(f"severities must be among 1-5, got {sevs}")
    require_positive_int(batch_size, "batch size")
    require_positive_int(n_examples, "number of examples", optional=True)
    if out is not None and Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as corruptions.json")
    from ..adapters.external import model_dataset, model_record
    from ..adapters.routing import get_adapter

    model, training, ckpt_path, ckpt_sha = _load_model(model_or_ckpt, device)
    spec = getattr(model, "spec", None)
    info = get_dataset_info(model_dataset(model))  # type: ignore[arg-type]
    classes = spec.num_classes if spec is not None else model.num_classes
    shape = tuple(spec.input_shape if spec is not None else model.data_shape)
    if classes != info.num_classes or shape != tuple(info.input_shape):
        raise CheckpointError(f"the model ({classes} classes, inputs {shape}) does not fit "
                              f"{info.name} ({info.num_classes} classes, inputs {tuple(info.input_shape)})")
    adapter = get_adapter(model)
    test = load_dataset(info.name, "test", root=data_root)
    n_total = len(test)  # type: ignore[arg-type]
    if n_examples is not None and n_examples > n_total:
        raise DataError(f"asked for {n_examples} examples but the {info.name} test set has only {n_total}")
    indices = torch.arange(n_total) if n_examples is None else subset_indices(n_total, n_examples, seed)
    n = int(indices.numel())
    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    clean_k = 0
    correct = {c: {s: 0 for s in sevs} for c in names}
    changed: dict[str, dict[int, int]] | None = None
    n_batches = (n + batch_size - 1) // batch_size
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"corruptions on {info.name}", total=n_batches * len(names) * len(sevs))
    try:
        for bi in range(n_batches):
            x, y = as_tensors(test, indices[bi * batch_size:(bi + 1) * batch_size])
            x, y = x.to(dev), y.to(dev)
            pred, sets = _routing_sets(model, x, adapter)
            clean_k += int((pred == y).sum())
            if sets is not None and changed is None:
                changed = {c: {s: 0 for s in sevs} for c in names}
            for ci, c in enumerate(CORRUPTION_NAMES):
                if c not in names:
                    continue
                for s in sevs:
                    g = torch.Generator().manual_seed(derive_seed(seed, ci, s, bi))
                    xc = corrupt(x, c, s, generator=g)
                    pc, sc = _routing_sets(model, xc, adapter)
                    correct[c][s] += int((pc == y).sum())
                    if changed is not None and sc is not None and sets is not None:
                        changed[c][s] += int(sc.ne(sets).any(dim=-1).any(dim=0).sum())
                    if bar is not None:
                        bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    pct = lambda k: 100.0 * k / n  # noqa: E731
    accuracy = {c: {str(s): pct(correct[c][s]) for s in sevs} for c in names}
    cells = [v for row in accuracy.values() for v in row.values()]
    rc = None if changed is None else {c: {str(s): pct(changed[c][s]) for s in sevs} for c in names}
    intervals: dict[str, Any] = {"clean_acc": wilson(clean_k, n).to_dict(),
                                 "accuracy": {c: {str(s): wilson(correct[c][s], n).to_dict() for s in sevs} for c in names}}
    res = CorruptionResult(
        dataset=info.name, n_examples=n, n_total=n_total, seed=seed, clean_acc=pct(clean_k),
        corruptions_acc=sum(cells) / len(cells), accuracy=accuracy,
        by_corruption={c: sum(accuracy[c].values()) / len(sevs) for c in names},
        by_severity={str(s): sum(accuracy[c][str(s)] for c in names) / len(names) for s in sevs},
        routing_change=rc,
        routing_change_mean=None if rc is None else sum(v for row in rc.values() for v in row.values()) / len(cells),
        intervals=intervals, corruptions=names, severities=sevs, seconds=time.perf_counter() - t0,
        model=model_record(model), training=training, checkpoint=ckpt_path, checkpoint_sha256=ckpt_sha,
        package_version=__version__,
    )
    if out is not None:
        atomic_write_bytes(Path(out), res.to_json().encode())
    return res


def read_corruption_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A corruption results JSON (validated: suite and the keys the leaderboard reads)."""
    from ..jsonsafe import loads

    p = Path(path)
    try:
        data = loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p} is not a readable results JSON: {e}") from None
    if not isinstance(data, dict) or data.get("suite") != "corruptions":
        raise ConfigError(f"{p} is not a corruption evaluation (suite must be 'corruptions')")
    for key in ("corruptions_acc", "clean_acc"):
        v = data.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
            raise ConfigError(f"{p}: {key} must be a percentage, got {v!r}")
    return data


__all__ = ["CorruptionResult", "evaluate_corruptions", "read_corruption_result"]
