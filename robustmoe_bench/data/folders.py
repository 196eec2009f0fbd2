"""Data sets read image by image from folders: TinyImageNet and ImageNet.

TinyImageNet (``tiny-imagenet-200`` as unzipped)::

    ROOT/wnids.txt                      one wnid per line; class index = position in sorted order
    ROOT/train/<wnid>/images/*.JPEG
    ROOT/val/images/*.JPEG
    ROOT/val/val_annotations.txt        "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>" per line

ImageNet (class folders, as ``torchvision.datasets.ImageFolder`` reads them)::

    ROOT/train/<class>/*.JPEG           class index = position of <class> in sorted folder names
    ROOT/val/<class>/*.JPEG             the validation set sorted into the same class folders

The ``test`` split reads ``val`` (the official test labels are not public).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..errors import DataError
from .info import DatasetInfo

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def _to_unit_float() -> list[Callable]:
    # PIL image -> float32 [C, H, W] in [0, 1] (exactly value / 255).
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]


class ImageFileDataset(Dataset):
    """``(path, label)`` samples decoded on access: ``dataset[i]`` is ``(x, y)`` with ``x`` float32
    [C, H, W] in [0, 1] after ``transform`` and ``y`` an ``int``. ``targets`` lists all labels."""

    def __init__(self, samples: Sequence[tuple[Path, int]], classes: Sequence[str], transform: Callable) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.targets = [y for _, y in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, y = self.samples[index]
        try:
            with Image.open(path) as im:
                # Some TinyImageNet/ImageNet files are greyscale or CMYK; models expect RGB.
                img = im.convert("RGB")
        except OSError as e:  # PIL.UnidentifiedImageError is an OSError
            raise DataError(f"{path}: cannot decode image ({e})") from None
        return self.transform(img), y

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, classes={len(self.classes)})"


def _image_files(folder: Path) -> list[Path]:
    found = []
    for dirpath, _, names in os.walk(folder, followlinks=True):
        found.extend(Path(dirpath) / n for n in names if n.lower().endswith(IMAGE_SUFFIXES))
    return sorted(found)


# ---------------------------------------------------------------- TinyImageNet

TINYIMAGENET_LAYOUT = (
    "expected tiny-imagenet-200's layout: wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
    "val/val_annotations.txt (unzip tiny-imagenet-200.zip there) or pass --data-root DIR"
)


def _tinyimagenet_transform(info: DatasetInfo, augment: bool) -> Callable:
    size = info.input_shape[1:]
    steps: list[Callable] = [v2.Resize(size)]  # a no-op for the 64x64 originals
    if augment:
        steps += [v2.RandomCrop(size, padding=8), v2.RandomHorizontalFlip()]
    return v2.Compose(steps + _to_unit_float())


def load_tinyimagenet(info: DatasetInfo, split: str, root: Path, augment: bool) -> ImageFileDataset:
    """TinyImageNet ``split`` (``test`` = ``val`` with ``val_annotations.txt``)."""
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        root = root / "tiny-imagenet-200"
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise DataError(f"{info.name} not found: looked for wnids.txt in {root}; {TINYIMAGENET_LAYOUT}")
    wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
    if not wnids or len(wnids) > info.num_classes:
        raise DataError(f"{wnids_file}: {len(wnids)} wnids, expected 1..{info.num_classes}")
    index = {w: i for i, w in enumerate(wnids)}
    samples: list[tuple[Path, int]] = []
    if split == "train":
        for w in wnids:
            folder = root / "train" / w / "images"
            if not folder.is_dir():
                raise DataError(f"{info.name} incomplete: no folder train/{w}/images in {root}; {TINYIMAGENET_LAYOUT}")
            samples += [(p, index[w]) for p in _image_files(folder)]
    else:
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise DataError(f"{info.name} incomplete: no val/val_annotations.txt in {root}; {TINYIMAGENET_LAYOUT}")
        for lineno, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1].strip() not in index:
                raise DataError(f"{ann}:{lineno}: expected '<file>\\t<wnid from wnids.txt>...', got {line!r}")
            path = root / "val" / "images" / fields[0].strip()
            if not path.is_file():
                raise DataError(f"{ann}:{lineno}: image {path} does not exist")
            samples.append((path, index[fields[1].strip()]))
    if not samples:
        raise DataError(f"{info.name}: no images found for the {split} split in {root}; {TINYIMAGENET_LAYOUT}")
    return ImageFileDataset(samples, wnids, _tinyimagenet_transform(info, augment))


# ---------------------------------------------------------------- ImageNet

IMAGENET_LAYOUT = (
    "expected class folders ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG (the validation images "
    "sorted into their class folders); pass --data-root DIR"
)


def _imagenet_transform(info: DatasetInfo, augment: bool) -> Callable:
    size = info.input_shape[1]
    if augment:
        steps: list[Callable] = [v2.RandomResizedCrop(size), v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(round(size * 256 / 224)), v2.CenterCrop(size)]
    return v2.Compose(steps + _to_unit_float())


def load_imagenet(info: DatasetInfo, split: str, root: Path, augment: bool) -> ImageFileDataset:
    """ImageNet ``split`` from class folders (``train/`` or, for ``test``, ``val/``)."""
    folder = root / ("train" if split == "train" else "val")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir()) if folder.is_dir() else []
    if not classes:
        raise DataError(f"{info.name} not found: looked for class folders in {folder}; {IMAGENET_LAYOUT}")
    if len(classes) > info.num_classes:
        raise DataError(f"{folder}: {len(classes)} class folders, more than the {info.num_classes} classes")
    samples = [(p, i) for i, c in enumerate(classes) for p in _image_files(folder / c)]
    if not samples:
        raise DataError(f"{info.name}: no images under {folder}; {IMAGENET_LAYOUT}")
    return ImageFileDataset(samples, classes, _imagenet_transform(info, augment))
