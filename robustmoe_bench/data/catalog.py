"""The built-in data sets, registered in ``DATASETS`` on import."""
from __future__ import annotations

from ..config import parse_eps
from .cifar import load_cifar
from .folders import load_imagenet, load_tinyimagenet
from .idx import load_fashion_mnist
from .info import DATASETS, DatasetInfo, Loader


def _add(name: str, eps_str: str, loader: Loader, **kw: object) -> None:
    root = kw.pop("default_root", f"~/data/{name}")
    DATASETS.register(
        name,
        DatasetInfo(name=name, eps=parse_eps(eps_str), eps_str=eps_str, default_root=root, loader=loader, **kw),  # type: ignore[arg-type]
    )


_add(
    "fashion-mnist", "0.1", load_fashion_mnist,
    num_classes=10, input_shape=(1, 28, 28), mean=(0.2860,), std=(0.3530,), stem="cifar",
    default_root="/usr/share/datasets/fashion-mnist", train_size=60000, test_size=10000,
)
_add(
    "cifar10", "8/255", load_cifar,
    num_classes=10, input_shape=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    stem="cifar", train_size=50000, test_size=10000, robustbench_name="cifar10",
)
_add(
    "cifar100", "8/255", load_cifar,
    num_classes=100, input_shape=(3, 32, 32), mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    stem="cifar", train_size=50000, test_size=10000, robustbench_name="cifar100",
)
_add(
    "tinyimagenet", "2/255", load_tinyimagenet,
    num_classes=200, input_shape=(3, 64, 64), mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821),
    stem="cifar", train_size=100000, test_size=10000,
)
_add(
    "imagenet", "2/255", load_imagenet,
    num_classes=1000, input_shape=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    stem="imagenet", train_size=1281167, test_size=50000, robustbench_name="imagenet",
)
