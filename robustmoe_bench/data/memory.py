"""Data sets held entirely in memory as one ``uint8`` tensor (Fashion-MNIST, CIFAR).

Training and evaluation loops may slice ``dataset.images`` / ``dataset.labels`` directly instead of
going through ``__getitem__`` one example at a time; :meth:`InMemoryImageDataset.batch` and
:func:`random_crop_flip` give them the same pixels and augmentation the per-item path gives.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset


def random_crop_flip(
    x: torch.Tensor, padding: int, flip: bool, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Random crop after zero padding, and optional random horizontal flip, per example, in one gather.

    Shape: ``x`` [B, C, H, W] (any dtype) -> [B, C, H, W], same dtype and device. Each example gets its
    own offset in ``[0, 2 * padding]`` on both axes and, with ``flip``, a fair coin for mirroring.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        x = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    # Offsets are drawn on the CPU so a CPU generator also works for CUDA batches.
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    rows = oy[:, None] + torch.arange(h, device=dev)  # [B, H]
    cols = ox[:, None] + torch.arange(w, device=dev)  # [B, W]
    if flip:
        mirror = (torch.rand(b, generator=generator) < 0.5).to(dev)
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class InMemoryImageDataset(Dataset):
    """Images as a ``uint8`` tensor ``images`` [N, C, H, W] and ``labels`` as a ``long`` tensor [N].

    ``dataset[i]`` is ``(x, y)`` with ``x`` float32 [C, H, W] in [0, 1] and ``y`` an ``int``. With
    ``augment`` (train split only) ``x`` is randomly cropped after ``pad`` pixels of zero padding and,
    with ``flip``, randomly mirrored; the torch global RNG is used, so DataLoader worker seeding applies.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        classes: Optional[Sequence[str]] = None,
        augment: bool = False,
        pad: int = 0,
        flip: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be [N] with N={images.shape[0]}, got {tuple(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.long)
        self.classes = list(classes) if classes is not None else None
        self.augment = augment
        self.pad = pad
        self.flip = flip

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].to(torch.float32).div_(255)
        if self.augment:
            x = random_crop_flip(x[None], self.pad, self.flip)[0]
        return x, int(self.labels[index])

    def batch(
        self, indices: torch.Tensor | Sequence[int] | None = None, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``indices`` (all if ``None``) as ``x`` float32 [n, C, H, W] in [0, 1] and ``y`` long [n],
        augmented exactly as ``__getitem__`` would when ``augment`` is set."""
        if indices is None:
            images, labels = self.images, self.labels
        else:
            idx = torch.as_tensor(indices, dtype=torch.long)
            images, labels = self.images[idx], self.labels[idx]
        x = images.to(torch.float32).div_(255)
        if self.augment:
            x = random_crop_flip(x, self.pad, self.flip, generator)
        return x, labels.clone()

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return f"{type(self).__name__}(n={len(self)}, shape=({c}, {h}, {w}), augment={self.augment})"
