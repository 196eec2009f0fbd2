"""CIFAR-10 / CIFAR-100 from torchvision's python-batch layout.

``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``; ``cifar-100-python/train`` and ``test``.
Each is a pickled dict with ``data`` (uint8 numpy array [N, 3072], channel-major 32x32 planes) and
``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100).

Why pickle, and why it is safe here: the batches are published only as pickles, so reading them
means unpickling. A plain ``pickle.load`` runs any callable a file names, i.e. a downloaded file
could execute code. :class:`CifarUnpickler` therefore resolves only the few globals that numpy
needs to rebuild a ``uint8`` array (``_reconstruct``, ``ndarray``, ``dtype``, ``_frombuffer`` for
protocol-5 re-saves, and a latin-1-only ``_codecs.encode`` for protocol-2 re-saves of ``bytes``) and
refuses every other global, so no other code can be reached; the result is then type-checked.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DataError
from .info import DatasetInfo
from .memory import InMemoryImageDataset

CIFAR_LAYOUT = {
    # name: (folder, {split: batch files}, label key, torchvision class)
    "cifar10": (
        "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "labels",
        "CIFAR10",
    ),
    "cifar100": ("cifar-100-python", {"train": ("train",), "test": ("test",)}, "fine_labels", "CIFAR100"),
}
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


_LATIN1_NAMES = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1"); any other
    # codec name is refused without being looked up, so no codec module can be imported on its behalf.
    if not (isinstance(text, str) and isinstance(encoding, str) and encoding.lower() in _LATIN1_NAMES):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    core = getattr(np, "_core", None) or np.core  # numpy >= 2 renamed numpy.core to numpy._core
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{prefix}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


class CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array-rebuilding globals and refuses all others."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def read_cifar_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file -> ``images`` uint8 [N, 3, 32, 32] and ``labels`` long [N]."""
    try:
        with open(path, "rb") as f:
            # latin1 is what Python-2 pickles (the published batches) need for numpy's raw buffers.
            obj = CifarUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: not a CIFAR batch ({e})") from None
    except Exception as e:  # a corrupt pickle can fail in many ways (EOFError, ValueError, TypeError...)
        raise DataError(f"{path}: corrupt CIFAR batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR batch (holds a {type(obj).__name__}, expected a dict)")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path}: CIFAR batch lacks 'data' or {label_key!r} (keys: {sorted(map(str, batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array [N, 3072], got {what}")
    try:
        labels = torch.as_tensor(np.asarray(batch[label_key], dtype=np.int64))
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: unreadable {label_key!r} ({e})") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {label_key!r} has shape {tuple(labels.shape)}")
    images = torch.from_numpy(np.array(data, copy=True).reshape(-1, 3, 32, 32))
    return images, labels


def find_cifar_folder(info: DatasetInfo, root: Path) -> Path:
    """``root/<folder>`` if present, else ``root`` itself if it holds the batches; else :class:`DataError`."""
    folder, files, _, tv_class = CIFAR_LAYOUT[info.name]
    for candidate in (root / folder, root):
        if (candidate / files["test"][0]).is_file() or (candidate / files["train"][0]).is_file():
            return candidate
    raise DataError(
        f"{info.name} not found: looked for {folder}/{files['train'][0]} in {root} (or in {root} itself); "
        f"place torchvision's python batches there, e.g. run torchvision.datasets.{tv_class}('{root}', "
        f"download=True) on a machine with internet access, or pass --data-root DIR"
    )


def load_cifar(info: DatasetInfo, split: str, root: Path, augment: bool) -> InMemoryImageDataset:
    """CIFAR-10/100 ``split``: ``images`` uint8 [N, 3, 32, 32] concatenated over the split's batches."""
    _, files, label_key, _ = CIFAR_LAYOUT[info.name]
    folder = find_cifar_folder(info, root)
    missing = [name for name in files[split] if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{info.name} incomplete: {', '.join(missing)} missing in {folder}")
    parts = [read_cifar_batch(folder / name, label_key) for name in files[split]]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
        raise DataError(f"{folder}: labels outside 0..{info.num_classes - 1} in the {split} split")
    classes = CIFAR10_CLASSES if info.name == "cifar10" else _cifar100_classes(folder)
    return InMemoryImageDataset(images, labels, classes=classes, augment=augment, pad=4, flip=True)


def _cifar100_classes(folder: Path) -> tuple[str, ...] | None:
    # Class names live in the optional 'meta' file; without it the data are still usable.
    meta = folder / "meta"
    if not meta.is_file():
        return None
    try:
        with open(meta, "rb") as f:
            obj = CifarUnpickler(f, encoding="latin1").load()
        names = obj.get("fine_label_names", obj.get(b"fine_label_names"))
        return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)
    except Exception:
        return None
