"""What the package knows about a data set (:class:`DatasetInfo`), the ``DATASETS`` registry, and
where a data set's files are looked for (:func:`resolve_root`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from ..config import parse_eps
from ..errors import DataError
from ..registry import Registry

if TYPE_CHECKING:
    from torch.utils.data import Dataset

#: Environment variable naming a folder that holds one sub-folder per data set (``$ROBUSTMOE_DATA/cifar10``).
DATA_ENV = "ROBUSTMOE_DATA"

#: The splits every data set offers. ``test`` is the official held-out set (the ``val`` folder for
#: TinyImageNet and ImageNet, whose real test labels are not public).
SPLITS = ("train", "test")

#: ``loader(info, split, root, augment) -> Dataset``; ``root`` is already resolved.
Loader = Callable[["DatasetInfo", str, Path, bool], "Dataset"]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set.

    ``mean``/``std`` are per channel and meant for normalisation *inside* the model: every data set
    yields inputs in [0, 1], the space in which attack budgets (``eps``) are defined.
    ``stem`` names the network stem that fits the input size (``"cifar"`` for 28-64 px inputs,
    ``"imagenet"`` for 224 px). ``loader`` builds the ``torch`` data set; third-party data sets
    register a ``DatasetInfo`` with their own loader.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float
    eps_str: str
    default_root: str
    stem: str
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    robustbench_name: Optional[str] = None
    loader: Optional[Loader] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        channels = self.input_shape[0]
        if len(self.input_shape) != 3 or len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"{self.name}: input_shape must be (C, H, W) with one mean/std per channel")
        if self.stem not in ("cifar", "imagenet"):
            raise ValueError(f"{self.name}: stem must be 'cifar' or 'imagenet', got {self.stem!r}")
        if abs(parse_eps(self.eps_str) - self.eps) > 1e-12:
            raise ValueError(f"{self.name}: eps={self.eps} disagrees with eps_str={self.eps_str!r}")

    @property
    def channels(self) -> int:
        return self.input_shape[0]


DATASETS: Registry[DatasetInfo] = Registry("data set")


def get_dataset_info(name: str) -> DatasetInfo:
    """The registered :class:`DatasetInfo` for ``name``; an unknown name raises :class:`DataError`."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS.names()) or '(none)'}")
    return DATASETS.get(name)


def dataset_names() -> list[str]:
    """Sorted names of all registered data sets."""
    return DATASETS.names()


def resolve_root(info: DatasetInfo, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder a data set is read from.

    An explicit ``root`` always wins. Otherwise, with ``$ROBUSTMOE_DATA`` set, ``$ROBUSTMOE_DATA/<name>``
    is used, unless it does not exist while ``info.default_root`` does (so Debian's Fashion-MNIST is
    still found when the user's data folder lacks it). Without the variable, ``info.default_root``.
    """
    if root is not None:
        return Path(root).expanduser()
    default = Path(info.default_root).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        candidate = Path(env).expanduser() / info.name
        if candidate.exists() or not default.exists():
            return candidate
    return default
