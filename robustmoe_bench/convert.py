"""Convert checkpoints written by other projects' training code into robustmoe-bench checkpoints.

``advmoe-public``: what OPTML-Group/Robust-MoE-CNN's ``train_moe.py`` saves with ``torch.save`` -- a dict
with ``"state_dict"`` (the backbone; with ``--normalize`` also ``normalize.mean`` / ``normalize.std``, and
a copy of the router under ``router.*`` and under every MoE conv's ``<conv>.router.*``), ``"router"`` (the
router network), and training state (epoch, optimizer states, accuracies). The file is read with
``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which builds tensors and plain
containers only and refuses any other object, so no code from the file runs.

The public code's MoE-CNN is our ``kind="moe"`` model with ``layout="compact"``, ``router="resnet"`` and
``ste="identity"`` (see :mod:`robustmoe_bench.models.layers`): its tensors map one to one onto ours by
name. Mapped architectures: ``resnet18`` (CIFAR stem) and ``vgg16-bn``. Their ResNet applies its
normalisation layer before the router and the backbone, as ours does; their VGG has the layer but never
calls it, so a converted VGG uses mean 0 / std 1 whatever the checkpoint holds.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from .errors import CheckpointError, ConfigError
from .models import RoutedNet
from .models.factory import ModelSpec, build_model

SOURCES = ("advmoe-public",)

# VGG-16 configuration of the public code's features (conv widths before scaling; M = max-pool)
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def _resnet18_name(ours: str) -> str:
    """Our resnet18 tensor name -> the public code's (``None``-free: every tensor has a counterpart)."""
    rules: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"body\.stem\.conv\.(.+)", lambda m: f"conv1.{m[1]}"),
        (r"body\.stem\.bn\.(.+)", lambda m: f"bn1.{m[1]}"),
        (r"body\.layers\.(\d+)\.(conv1|bn1|conv2|bn2)\.(.+)",
         lambda m: f"layer{int(m[1]) // 2 + 1}.{int(m[1]) % 2}.{m[2]}.{m[3]}"),
        (r"body\.layers\.(\d+)\.sc_conv\.(.+)", lambda m: f"layer{int(m[1]) // 2 + 1}.{int(m[1]) % 2}.shortcut.0.{m[2]}"),
        (r"body\.layers\.(\d+)\.sc_bn\.(.+)", lambda m: f"layer{int(m[1]) // 2 + 1}.{int(m[1]) % 2}.shortcut.1.{m[2]}"),
        (r"body\.fc\.(.+)", lambda m: f"linear.{m[1]}"),
    ]
    return _apply(rules, ours)


def _vgg16_indices() -> list[int]:
    """Index in the public ``features`` Sequential of each conv (its BN follows at +1, ReLU at +2)."""
    idx, out = 0, []
    for v in _VGG16:
        if v == "M":
            idx += 1
        else:
            out.append(idx)
            idx += 3
    return out


def _vgg16_name(ours: str) -> str:
    conv_at = _vgg16_indices()
    rules: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"body\.convs\.(\d+)\.(.+)", lambda m: f"features.{conv_at[int(m[1])]}.{m[2]}"),
        (r"body\.bns\.(\d+)\.(.+)", lambda m: f"features.{conv_at[int(m[1])] + 1}.{m[2]}"),
        (r"body\.fc1\.(.+)", lambda m: f"classifier.0.{m[1]}"),
        (r"body\.head\.1\.(.+)", lambda m: f"classifier.2.{m[1]}"),
        (r"body\.head\.3\.(.+)", lambda m: f"classifier.4.{m[1]}"),
    ]
    return _apply(rules, ours)


def _apply(rules: list[tuple[str, Callable[[re.Match[str]], str]]], name: str) -> str:
    for pattern, fn in rules:
        m = re.fullmatch(pattern, name)
        if m:
            return fn(m)
    raise AssertionError(f"no name rule for {name}")  # a mapping bug, not bad input


#: arch -> (our name -> public name, whether the public forward applies its normalisation layer)
ARCH_MAPS: dict[str, tuple[Callable[[str], str], bool]] = {
    "resnet18": (_resnet18_name, True),
    "vgg16-bn": (_vgg16_name, False),
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_torch_weights(path: str | Path) -> Any:
    """``torch.load`` with the weights-only unpickler; every failure is one :class:`CheckpointError` line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # protocol notes of the restricted unpickler are not the user's concern
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- UnpicklingError, zip errors, truncation: all "cannot read"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {path} as a weights-only torch file: {first[:200]}") from None


def _tensor_dict(obj: Any, what: str) -> dict[str, Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{what} is not a dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def convert_advmoe_public(ckpt: dict[str, Any], *, arch: str, experts: int, scale: float,
                          dataset: str) -> RoutedNet:
    """The robustmoe-bench model holding the public code's checkpoint ``ckpt`` (as loaded).

    Raises :class:`CheckpointError` naming the first missing, misshapen or unexpected tensor.
    """
    from .data import get_dataset_info

    if arch not in ARCH_MAPS:
        raise ConfigError(f"--from advmoe-public maps --arch {', '.join(ARCH_MAPS)}; got {arch!r} "
                          "(wrn-28-10 and densenet are not mapped yet)")
    to_public, normalises = ARCH_MAPS[arch]
    info = get_dataset_info(dataset)
    if info.input_shape[0] != 3 or info.input_shape[1] >= 128:
        raise ConfigError(f"the public code's CIFAR models take 3-channel images below 128 px; "
                          f"{dataset} has input shape {tuple(info.input_shape)}")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError("not an advmoe-public checkpoint: no 'state_dict' entry "
                              f"(found: {', '.join(sorted(map(str, ckpt))[:8]) if isinstance(ckpt, dict) else type(ckpt).__name__})")
    state = _tensor_dict(ckpt["state_dict"], "'state_dict'")
    if "router" in ckpt:
        router = _tensor_dict(ckpt["router"], "'router'")
    else:  # the model's own registered copy
        router = {k[len("router."):]: v for k, v in state.items() if k.startswith("router.")}
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if normalises and "normalize.mean" in state:
        mean = tuple(float(v) for v in state["normalize.mean"].flatten())
        std = tuple(float(v) for v in state["normalize.std"].flatten())
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise CheckpointError("normalize.mean / normalize.std must hold 3 values (std > 0)")
    spec = ModelSpec(arch=arch, kind="moe", experts=int(experts), scale=float(scale), router="resnet",
                     dataset=dataset, num_classes=info.num_classes, input_shape=tuple(info.input_shape),
                     mean=mean, std=std, stem="cifar", layout="compact", ste="identity", compat="advmoe-public")
    model = build_model(spec)
    ours = model.state_dict()
    new: dict[str, Tensor] = {}
    used: set[str] = set()
    for name, target in ours.items():
        if name.startswith("router."):
            src_name, src, where = name[len("router."):], router, "router"
        else:
            src_name, src, where = to_public(name), state, "state_dict"
        if src_name not in src:
            raise CheckpointError(f"missing key {where}[{src_name!r}] (for {arch}, N={experts}, r={scale:g})")
        t = src[src_name]
        if tuple(t.shape) != tuple(target.shape):
            raise CheckpointError(f"key {where}[{src_name!r}] has shape {list(t.shape)}, {arch} with N={experts}, "
                                  f"r={scale:g} needs {list(target.shape)} (check --arch/--experts/--scale)")
        new[name] = t.to(target.dtype)
        if where == "state_dict":
            used.add(src_name)
    ignorable = re.compile(r"(router\..*|.*\.router\..*|normalize\.(mean|std))")
    extra = sorted(k for k in state if k not in used and not ignorable.fullmatch(k))
    if extra:
        raise CheckpointError(f"unexpected key state_dict[{extra[0]!r}] ({len(extra)} in all): not part of "
                              f"{arch} with N={experts}, r={scale:g} (check --arch/--experts/--scale)")
    model.load_state_dict(new, strict=True)
    return model.eval()


def public_training_record(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """What the converted checkpoint records about its origin."""
    rec: dict[str, Any] = {"method": "advmoe-public", "converted_from": "advmoe-public",
                           "source_file": path.name, "source_sha256": sha256_file(path)}
    for key in ("epoch", "best_acc", "arch"):
        v = ckpt.get(key)
        if isinstance(v, Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            rec[f"source_{key}"] = v
    return rec


__all__ = ["SOURCES", "ARCH_MAPS", "convert_advmoe_public", "load_torch_weights", "public_training_record"]
