"""Typed evaluation results and their JSON form (the shared format in ``docs/DEVELOPING.md``).

:class:`EvalResult` is what :func:`robustmoe_bench.evaluation.evaluate` returns and what
``robustmoe-bench evaluate --out`` writes. Percentages are 0-100 floats rounded to 4 decimals (so that
a run and its resumed or distributed twin serialise to the same text).

Time-valued keys -- the top-level ``seconds`` and each attack entry's ``seconds`` -- are the only
values that may differ between two runs with the same settings (a resumed run measures only what it
recomputed). :data:`TIME_KEYS` names them and :meth:`EvalResult.deterministic_dict` drops them: that is
the part the resume and distributed guarantees are about. ``seconds`` is compute time: the sum over
every batch (on every rank) of the cascade's time, plus the checks and the FLOP count; for a
one-process run without resume it is the wall time less loading.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..checkpoint import atomic_write_bytes
from ..config import from_dict
from ..errors import ConfigError
from .. import jsonsafe

SCHEMA_VERSION = 1

#: Keys whose values are wall-clock measurements; excluded from the identity guarantees.
TIME_KEYS = ("seconds",)


def pct(count: int, total: int) -> float:
    """``100 * count / total`` rounded to 4 decimals (0.0 for an empty set)."""
    return round(100.0 * count / total, 4) if total else 0.0


@dataclass
class AttackResult:
    """One attack of the cascade.

    ``robust_acc``: % of all ``n_examples`` still robust after this attack (cascade: an example broken
    earlier stays broken). ``n_attacked``: examples the attack ran on; ``n_broken``: of those, how many
    it newly broke. ``routing_change``: % of all ``n_examples`` whose expert choice (any MoE layer) it
    changed vs the clean input (``None`` for non-MoE models). ``scope``: ``"robust"`` (ran only on
    examples still robust) or ``"all"`` (every example: router attacks, whose routing-change rate is
    a property of the whole set), ``"alone"`` (every clean-correct example not fooled by an earlier
    member of its group: AutoAttack measured on its own). ``skipped``: why it did not run, else ``None``
    (e.g. a model without routers, or a routing adapter that cannot force pathways).
    ``robust_acc_alone``: % of all ``n_examples`` correct under this attack alone (for a group member,
    under its group's own cascade up to it), where the attack ran on every example that needs;
    else ``None``.
    """

    name: str
    attack: str
    params: dict[str, Any]
    robust_acc: Optional[float]
    n_attacked: int
    n_broken: int
    routing_change: Optional[float]
    scope: str
    seconds: float
    skipped: Optional[str] = None
    robust_acc_alone: Optional[float] = None


@dataclass
class EvalResult:
    """A finished evaluation (schema version 1). See ``docs/DEVELOPING.md`` for every key.

    Uncertainty: ``intervals`` gives, for ``clean_acc``, every ``robust_acc`` and every
    ``robust_acc_alone`` value, its count ``k`` of ``n`` and the 95 % Wilson interval (``low``/``high``
    in %). ``expert_use``: routing health on the clean evaluated examples (``None`` without routing).
    ``n_total`` is the size of the test set the ``n_examples`` were drawn from. ``examples``
    holds the per-example outcomes (``"0110..."`` over the evaluation set, in order: ``clean``,
    ``worst_case`` and, where measured, ``autoattack`` alone or the ``screen`` suite's ``autoattack-estimate``) and ``indices_sha256``, which names the
    evaluated examples, so two results on the same examples can be compared with a paired test."""

    suite: str
    dataset: str
    threat_model: str
    eps: float
    eps_str: str
    n_examples: int
    seed: int
    clean_acc: float
    robust_acc: dict[str, float]
    attacks: list[AttackResult]
    routing: dict[str, float]
    router_robustness: Optional[dict[str, float]]
    flags: dict[str, dict[str, Any]]
    unreliable: bool
    gflops: Optional[dict[str, float]]
    seconds: float
    model: dict[str, Any]
    training: dict[str, Any]
    checkpoint: Optional[str]
    checkpoint_sha256: Optional[str]
    package_version: str
    schema_version: int = SCHEMA_VERSION
    #: the attacks the worst case is taken over (those that ran; skipped ones are named in ``attacks``)
    worst_case_attacks: list[str] = field(default_factory=list)
    n_total: Optional[int] = None
    robust_acc_alone: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, Any] = field(default_factory=dict)
    examples: Optional[dict[str, str]] = None
    #: routing health on the clean evaluated examples (:class:`~robustmoe_bench.adapters.expert_use.ExpertUse`
    #: as a dict: shares per layer, busiest share, normalised entropy, ``collapsed``); ``None`` for a model
    #: without routing (and in results written before it existed)
    expert_use: Optional[dict[str, Any]] = None
    #: True for a suite that estimates AutoAttack's figure (``screen``) instead of running AutoAttack:
    #: a figure for model selection, never for a leaderboard or the zoo
    estimate: bool = False

    @property
    def collapsed(self) -> bool:
        """True for a routed model whose routing collapsed in some MoE layer on the evaluated examples: its
        router-robustness figures then measure a router that cannot change, not a robust one."""
        return bool(self.expert_use and self.expert_use.get("collapsed"))

    @property
    def worst_case(self) -> float:
        """The headline number: % robust under every attack of the suite."""
        return self.robust_acc["worst_case"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # schema_version first: a reader sees the version before anything else. The JSON round trip
        # makes the in-memory dict equal to what a reader of the file gets (tuples become lists).
        return json.loads(json.dumps({"schema_version": d.pop("schema_version"), **d}))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalResult":
        if not isinstance(d, dict):
            raise ConfigError("evaluation results must be a JSON object")
        d = dict(d)
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError(f"evaluation results have schema_version {version!r}; this version reads {SCHEMA_VERSION}")
        attacks = d.get("attacks", [])
        if not isinstance(attacks, list):
            raise ConfigError("evaluation result: 'attacks' must be a list")
        d["attacks"] = [from_dict(AttackResult, a, what="attack result", strict=True) for a in attacks]
        for name, flag in (d.get("flags") or {}).items() if isinstance(d.get("flags"), dict) else ():
            if not isinstance(flag, dict) or not isinstance(flag.get("passed"), bool):
                raise ConfigError(f"evaluation result: flag {name!r} must be an object whose 'passed' is true or false")
        return from_dict(cls, d, what="evaluation result", strict=True)

    @classmethod
    def from_json(cls, text: str) -> "EvalResult":
        try:
            return cls.from_dict(jsonsafe.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"evaluation results are not valid JSON: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "EvalResult":
        try:
            text = open(path, encoding="utf-8").read()
        except OSError as e:
            raise ConfigError(f"cannot read evaluation results {path}: {e.strerror}") from None
        return cls.from_json(text)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON atomically (temporary file + rename): never a partial file."""
        atomic_write_bytes(path, self.to_json().encode("utf-8"))

    def deterministic_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the time-valued keys (:data:`TIME_KEYS`): equal for equal settings."""
        d = self.to_dict()
        for k in TIME_KEYS:
            d.pop(k, None)
        d["attacks"] = [{k: v for k, v in a.items() if k not in TIME_KEYS} for a in d["attacks"]]
        return d


__all__ = ["SCHEMA_VERSION", "TIME_KEYS", "AttackResult", "EvalResult", "pct"]
