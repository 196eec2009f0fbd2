"""Building a data set by name, and turning (part of) any data set into tensors."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset, Subset

from ..errors import DataError
from .info import SPLITS, get_dataset_info, resolve_root
from .memory import InMemoryImageDataset


def load_dataset(
    name: str, split: str, root: str | os.PathLike[str] | None = None, augment: bool = False
) -> Dataset:
    """Data set ``name``'s ``split`` ("train" or "test") read from ``root`` (see :func:`resolve_root`).

    Items are ``(x, y)``: ``x`` float32 [C, H, W] in [0, 1] (normalisation is the model's job), ``y`` an
    ``int``. ``augment`` (train only) adds the data set's standard augmentation. Nothing is downloaded: a
    missing or malformed data set raises :class:`DataError` with one line saying where it looked.
    """
    info = get_dataset_info(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {name}; choose one of {', '.join(SPLITS)}")
    if augment and split != "train":
        raise DataError(f"augmentation is for the train split only, not {split!r}")
    if info.loader is None:
        raise DataError(f"data set {name!r} is registered without a loader")
    return info.loader(info, split, resolve_root(info, root), augment)


def as_tensors(
    dataset: Dataset, indices: torch.Tensor | Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples ``indices`` (all if ``None``) of any data set as ``x`` float32 [n, C, H, W] in [0, 1] and
    ``y`` long [n]. In-memory data sets are sliced in one step; others are read item by item."""
    if isinstance(dataset, Subset):
        inner = torch.as_tensor(dataset.indices, dtype=torch.long)
        mapped = inner if indices is None else inner[torch.as_tensor(indices, dtype=torch.long)]
        return as_tensors(dataset.dataset, mapped)
    if isinstance(dataset, InMemoryImageDataset):
        return dataset.batch(indices)
    order = range(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long).tolist()  # type: ignore[arg-type]
    xs, ys = [], []
    for i in order:
        x, y = dataset[i]
        xs.append(x)
        ys.append(int(y))
    if not xs:
        return torch.empty(0, dtype=torch.float32), torch.empty(0, dtype=torch.long)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """All labels of a data set as a ``long`` tensor [N] without decoding images where possible."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, InMemoryImageDataset):
        return dataset.labels.clone()
    targets: Optional[Sequence[int]] = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(list(targets), dtype=torch.long)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)  # type: ignore[arg-type]
