"""Data sets: Fashion-MNIST, CIFAR-10, CIFAR-100, TinyImageNet and ImageNet, read from local files.

Every data set yields ``(x, y)`` with ``x`` a float32 tensor [C, H, W] in [0, 1] and ``y`` an int;
normalisation (``DatasetInfo.mean`` / ``std``) happens inside the model, so attack budgets are in
pixel space. Nothing is ever downloaded.

Where files are looked for (see :func:`resolve_root`):

* an explicit ``root`` (the CLI's ``--data-root``) always wins;
* else, if the environment variable ``ROBUSTMOE_DATA`` is set, ``$ROBUSTMOE_DATA/<name>``
  (e.g. ``$ROBUSTMOE_DATA/cifar10``), falling back to the default below only when that folder does
  not exist but the default does;
* else the default: ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``) for
  Fashion-MNIST, ``~/data/<name>`` for the others.

Layouts: Fashion-MNIST as IDX files (``train-images-idx3-ubyte[.gz]`` ...); CIFAR as torchvision's
python batches (``ROOT/cifar-10-batches-py/`` or that folder itself, likewise ``cifar-100-python``);
TinyImageNet as unzipped ``tiny-imagenet-200`` (``wnids.txt``, ``train/``, ``val/`` with
``val_annotations.txt``); ImageNet as ``train/<class>/`` and ``val/<class>/`` folders.
"""
from __future__ import annotations

from . import catalog  # noqa: F401  (registers the built-in data sets)
from .info import DATA_ENV, DATASETS, SPLITS, DatasetInfo, dataset_names, get_dataset_info, resolve_root
from .load import as_tensors, dataset_labels, load_dataset
from .memory import InMemoryImageDataset, random_crop_flip
from .sampling import class_balanced_subset, subset_indices

__all__ = [
    "DATA_ENV",
    "DATASETS",
    "SPLITS",
    "DatasetInfo",
    "InMemoryImageDataset",
    "as_tensors",
    "class_balanced_subset",
    "dataset_labels",
    "dataset_names",
    "get_dataset_info",
    "load_dataset",
    "random_crop_flip",
    "resolve_root",
    "subset_indices",
]
