"""Honest robustness evaluation: attack suites with a per-example worst-case cascade, gradient-masking
checks, resumable and shardable batch processing, and typed results.

Example::

    >>> from robustmoe_bench.evaluation import evaluate
    >>> res = evaluate("model.safetensors", suite="standard", n_examples=500, out="results.json")
    >>> res.robust_acc["worst_case"]
"""
from __future__ import annotations

from .results import SCHEMA_VERSION, TIME_KEYS, AttackResult, EvalResult
from .runner import CHECK_EXAMPLES, DEFAULT_BATCH_SIZE, THREAT_MODELS, evaluate, resolve_eps
from .suites import SUITES, AttackSpec, PlannedAttack, Suite, get_suite, plan, run_cascade

__all__ = [
    "CHECK_EXAMPLES", "DEFAULT_BATCH_SIZE", "SCHEMA_VERSION", "SUITES", "THREAT_MODELS", "TIME_KEYS",
    "AttackResult", "AttackSpec", "EvalResult", "PlannedAttack", "Suite", "evaluate", "get_suite", "plan",
    "resolve_eps", "run_cascade",
]
