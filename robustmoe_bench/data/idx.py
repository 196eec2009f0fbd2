"""Fashion-MNIST from IDX files, the format Debian's ``dataset-fashion-mnist`` ships.

IDX: a 4-byte big-endian magic ``0x00 0x00 <type> <ndim>`` (type ``0x08`` = unsigned byte, so labels
are 2049 and images 2051), then ``ndim`` big-endian ``uint32`` sizes, then the data in C order.
Files may be gzip-compressed (``.gz``) or plain.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Optional

import torch

from ..errors import DataError
from .info import DatasetInfo
from .memory import InMemoryImageDataset

IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_UBYTE = 0x08

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def read_idx(path: str | Path, expect_magic: Optional[int] = None) -> torch.Tensor:
    """Read an unsigned-byte IDX file (gzip or plain) into a ``uint8`` tensor of its stored shape.

    A wrong magic number, a truncated or over-long body, or a broken gzip stream raises
    :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    (magic,) = struct.unpack(">I", raw[:4])
    if raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {magic:#010x})")
    if expect_magic is not None and magic != expect_magic:
        raise DataError(f"{path}: IDX magic is {magic}, expected {expect_magic}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims)
    body = len(raw) - header
    if body != expected:
        what = "truncated" if body < expected else "corrupt (trailing bytes)"
        raise DataError(f"{path}: {what} IDX file: {body} data bytes for shape {dims}, expected {expected}")
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header, count=expected)
    return data.reshape(dims) if ndim else data


def find_idx_file(folder: Path, stem: str) -> Optional[Path]:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (plain first)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_fashion_mnist(info: DatasetInfo, split: str, root: Path, augment: bool) -> InMemoryImageDataset:
    """Fashion-MNIST ``split`` from the IDX files in ``root``: ``images`` uint8 [N, 1, 28, 28]."""
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    paths = []
    for stem in (image_stem, label_stem):
        found = find_idx_file(root, stem)
        if found is None:
            raise DataError(
                f"{info.name} not found: looked for {stem}(.gz) in {root}; install it with "
                f"'apt-get install dataset-fashion-mnist' or pass --data-root DIR"
            )
        paths.append(found)
    images = read_idx(paths[0], IDX_IMAGES_MAGIC)
    labels = read_idx(paths[1], IDX_LABELS_MAGIC)
    c, h, w = info.input_shape
    if tuple(images.shape[1:]) != (h, w):
        raise DataError(f"{paths[0]}: images are {tuple(images.shape[1:])}, expected {(h, w)}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{paths[0].parent}: {images.shape[0]} images in {paths[0].name} but "
            f"{labels.shape[0]} labels in {paths[1].name}"
        )
    labels = labels.to(torch.long)
    if labels.numel() and int(labels.max()) >= info.num_classes:
        raise DataError(f"{paths[1]}: label {int(labels.max())} out of range for {info.num_classes} classes")
    return InMemoryImageDataset(
        images.reshape(-1, c, h, w),
        labels,
        classes=FASHION_MNIST_CLASSES,
        augment=augment,
        pad=2,
        flip=False,
    )
