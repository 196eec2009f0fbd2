"""Fixed-expert evaluation: every MoE layer forced to one expert for every input, each expert in turn,
clean and PGD accuracy next to the gated model (the same examples, the same attack).

An expert that is robust alone while the gated model is not points at the router; a gated model more
robust than each of its experts alone may be masking gradients through its routing (the attack on the
gated model sees the hard routing, the attack on a forced expert does not) -- which is why the
adaptive attacks of ``evaluate --suite full`` exist. Forcing uses :func:`~robustmoe_bench.models.force_routing`
(top-k models: the set ``{e}``, weight 1; channel MoE: expert ``e`` in every layer), and the attack
runs on the forced model, so each number is the accuracy of that expert's pathway under its own attack.

Results JSON::

    {"schema_version": 1, "dataset": ..., "eps": 0.1, "eps_str": "0.1", "attack": "pgd-20",
     "n_examples": 500, "seed": 0,
     "rows": [{"expert": null, "label": "gated", "clean_acc": 80.2, "robust_acc": 40.1,
               "clean_ci": [low, high], "robust_ci": [low, high]},
              {"expert": 0, "label": "expert 0", ...}, ...],
     "model": {...}, "checkpoint": ..., "checkpoint_sha256": ...}
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import atomic_write_bytes
from ..errors import ConfigError, DataError, require_positive_int
from ..stats import wilson

SCHEMA_VERSION = 1


@dataclass
class ExpertRow:
    """One line: the gated model (``expert`` None) or one expert forced everywhere; accuracies in %."""

    expert: Optional[int]
    label: str
    clean_acc: float
    robust_acc: float
    clean_ci: tuple[float, float]
    robust_ci: tuple[float, float]


@dataclass
class FixedExpertResult:
    dataset: str
    eps: float
    eps_str: str
    attack: str
    n_examples: int
    seed: int
    rows: list[ExpertRow]
    model: dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None
    checkpoint_sha256: Optional[str] = None
    schema_version: int = SCHEMA_VERSION
    #: the gated model's routing health on the clean examples (``ExpertUse.to_dict()``)
    expert_use: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @property
    def gated(self) -> ExpertRow:
        return self.rows[0]

    def experts(self) -> list[ExpertRow]:
        return self.rows[1:]


def fixed_expert_eval(
    model_or_ckpt: Any,
    n_examples: Optional[int] = 500,
    seed: int = 0,
    eps: str | float | None = None,
    steps: int = 20,
    batch_size: int = 250,
    data_root: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    out: str | os.PathLike[str] | None = None,
) -> FixedExpertResult:
    """Clean and PGD-``steps`` accuracy of the gated model and of each expert forced in every MoE layer.
    Bad input raises before anything is written; ``out`` is written atomically."""
    from ..attacks import create_attack
    from ..config import format_eps
    from ..data import as_tensors, get_dataset_info, load_dataset, subset_indices
    from ..evaluation.runner import _load_model, resolve_eps
    from ..adapters.expert_use import ExpertUseMeter, expert_sets
    from ..adapters.routing import require_adapter
    from ..models import force_routing

    require_positive_int(steps, "--steps")
    require_positive_int(batch_size, "batch size")
    require_positive_int(n_examples, "number of examples", optional=True)
    if out is not None and Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as fixed_experts.json")
    model, _, ckpt_path, sha = _load_model(model_or_ckpt, device)
    spec = model.spec  # type: ignore[attr-defined]
    layers = model.moe_layers() if spec.is_moe else []  # type: ignore[operator]
    if not layers:
        raise ConfigError(f"fixed-expert evaluation needs an MoE model; this is {spec.describe()}")
    counts = {int(m.experts) for _, m in layers}
    if len(counts) != 1:
        raise ConfigError(f"the MoE layers have different expert counts {sorted(counts)}; forcing one index everywhere is undefined")
    n_exp = counts.pop()
    info = get_dataset_info(spec.dataset)
    eps_val = resolve_eps(eps, "Linf", info.name)
    test = load_dataset(info.name, "test", root=data_root)
    n_total = len(test)  # type: ignore[arg-type]
    if n_examples is not None and n_examples > n_total:
        raise DataError(f"asked for {n_examples} examples but the {info.name} test set has only {n_total}")
    indices = torch.arange(n_total) if n_examples is None else subset_indices(n_total, n_examples, seed)
    n = int(indices.numel())
    attack = create_attack("pgd", eps_val, steps=steps, seed=seed)
    dev = next(model.parameters()).device
    clean_k = [0] * (n_exp + 1)
    robust_k = [0] * (n_exp + 1)
    adapter = require_adapter(model, "fixed-expert evaluation")
    meter = ExpertUseMeter(n_exp, adapter.layer_names())
    for start in range(0, n, batch_size):
        x, y = as_tensors(test, indices[start:start + batch_size])
        x, y = x.to(dev), y.to(dev)
        meter.add(expert_sets(model, x)[1])
        for j, e in enumerate([None, *range(n_exp)]):
            ctx = nullcontext() if e is None else force_routing(model, e)
            with ctx:
                with torch.no_grad():
                    ok = model(x).argmax(1) == y
                clean_k[j] += int(ok.sum())
                if ok.any():
                    xa = attack(model, x[ok], y[ok])
                    with torch.no_grad():
                        robust_k[j] += int((model(xa).argmax(1) == y[ok]).sum())

    def row(j: int, e: Optional[int]) -> ExpertRow:
        c, r = wilson(clean_k[j], n), wilson(robust_k[j], n)
        return ExpertRow(e, "gated" if e is None else f"expert {e}", 100.0 * clean_k[j] / n, 100.0 * robust_k[j] / n,
                         (round(c.low, 2), round(c.high, 2)), (round(r.low, 2), round(r.high, 2)))

    res = FixedExpertResult(
        dataset=info.name, eps=eps_val, eps_str=format_eps(eps_val), attack=f"pgd-{steps}", n_examples=n, seed=seed,
        rows=[row(j, e) for j, e in enumerate([None, *range(n_exp)])], model=spec.to_dict(), checkpoint=ckpt_path,
        checkpoint_sha256=sha, expert_use=use.to_dict() if (use := meter.result()) is not None else None,
    )
    if out is not None:
        atomic_write_bytes(Path(out), res.to_json().encode())
    return res


__all__ = ["ExpertRow", "FixedExpertResult", "fixed_expert_eval"]
