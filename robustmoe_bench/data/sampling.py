"""Deterministic choice of example subsets (evaluation on n examples, class-balanced probes)."""
from __future__ import annotations

import torch

from ..errors import DataError


def subset_indices(n_total: int, n: int, seed: int) -> torch.Tensor:
    """``n`` distinct indices out of ``range(n_total)``, sorted, as a ``long`` tensor [n].

    The same ``(n_total, n, seed)`` always gives the same indices (a seeded ``torch.Generator``,
    independent of the global RNG), and a larger ``n`` with the same seed gives a superset.
    """
    if n < 0:
        raise DataError(f"cannot take {n} examples: the number must be non-negative")
    if n > n_total:
        raise DataError(f"asked for {n} examples but the data set has only {n_total}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values


def class_balanced_subset(labels: torch.Tensor, n_per_class: int, seed: int) -> torch.Tensor:
    """``n_per_class`` indices of every class present in ``labels`` [N], sorted, as a ``long`` tensor.

    A class with fewer than ``n_per_class`` examples raises :class:`DataError` naming it.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.numel(), generator=g)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = order[labels[order] == c]  # this class's indices, in the seeded random order
        if members.numel() < n_per_class:
            raise DataError(f"class {c} has only {members.numel()} examples, fewer than {n_per_class} asked for")
        chosen.append(members[:n_per_class])
    if not chosen:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(chosen).sort().values
