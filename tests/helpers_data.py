"""Tiny data sets for tests, written through the real file formats (importable from any test file)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from robustmoe_bench.data import load_dataset


def write_idx(path: Path, magic: int, arr: np.ndarray) -> None:
    """One gzip'd IDX file (``magic`` 2051 for images, 2049 for labels)."""
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes())


def write_fmnist_subset(root: Path, n_train: int, n_test: int) -> Path:
    """The first ``n_train`` training and ``n_test`` test images of the real Fashion-MNIST, as IDX files in ``root``."""
    for split, (img, lab), n in (("train", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), n_train),
                                 ("test", ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"), n_test)):
        ds = load_dataset("fashion-mnist", split)
        write_idx(root / f"{img}.gz", 2051, ds.images[:n, 0].numpy())
        write_idx(root / f"{lab}.gz", 2049, ds.labels[:n].numpy())
    return root
