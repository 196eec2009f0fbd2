"""One-file checkpoints: weights + metadata in the safetensors format.

Loading never unpickles anything: the file is parsed as safetensors (a JSON header and raw tensor
bytes), so a checkpoint cannot execute code. A pickle or ``torch.save`` archive is recognised and
refused with a clear message. Writes are atomic (temporary file, then rename).

Metadata (JSON in the safetensors header under ``robustmoe``): ``format``, ``format_version``,
``package_version``, ``model`` (a :class:`~robustmoe_bench.models.ModelSpec` dict), ``training``
(method and hyper-parameters) and any ``extra`` the caller adds.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import CheckpointError
from . import jsonsafe

FORMAT = "robustmoe-bench/checkpoint"
FORMAT_VERSION = 1
EXTRA_PREFIX = "__extra__."


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode), its metadata, and any extra tensors."""

    model: torch.nn.Module
    meta: dict[str, Any]
    extra_tensors: dict[str, Tensor] = field(default_factory=dict)

    @property
    def spec(self):
        return self.model.spec  # type: ignore[attr-defined]

    @property
    def training(self) -> dict[str, Any]:
        return self.meta.get("training", {})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    The file gets the permissions an ordinary ``open(path, "w")`` would give (``mode`` less the umask:
    0644 under the usual umask 022), not the 0600 of the temporary file: results, pages, registries and
    checkpoints are meant to be read by others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    training: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    extra_tensors: dict[str, Tensor] | None = None,
) -> Path:
    """Save ``model`` (a :class:`~robustmoe_bench.models.RoutedNet`) with its spec and metadata."""
    from safetensors.torch import save

    from . import __version__

    spec = getattr(model, "spec", None)
    if spec is None:
        raise TypeError("save_checkpoint needs a robustmoe_bench model (with a .spec)")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[EXTRA_PREFIX + k] = v.detach().to("cpu").contiguous()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "model": spec.to_dict(),
        "training": training or {},
        "extra": extra or {},
    }
    data = save(tensors, metadata={"robustmoe": json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(path, data)
    return Path(path)


def _sniff(path: Path) -> int:
    """Validate the container; returns the header length. Raises :class:`CheckpointError`."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(16)
    # a pickle starts with PROTO (0x80) and a protocol number 2..5; a safetensors file with an 8-byte
    # header length whose low byte is 0x80 looks alike, but has its JSON header's "{" at offset 8
    pickled = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and head[8:9] != b"{"
    if head.startswith(b"PK\x03\x04") or pickled:
        raise CheckpointError(
            f"{path} is a pickle / torch.save archive; refusing to unpickle it (it could run code). "
            "robustmoe-bench checkpoints are safetensors files"
        )
    if len(head) < 9:
        raise CheckpointError(f"{path} is not a robustmoe-bench checkpoint (file too short: {size} bytes)")
    (n,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or n > 100 * 2**20:
        raise CheckpointError(f"{path} is not a robustmoe-bench checkpoint (unrecognised format)")
    if 8 + n > size:
        raise CheckpointError(f"{path} is truncated (header says {8 + n} bytes or more, file has {size})")
    return n


def _read_header(path: Path) -> Any:
    """The parsed JSON header of a safetensors file (the tensors are not read)."""
    n = _sniff(path)
    with path.open("rb") as f:
        f.seek(8)
        try:
            return jsonsafe.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path} has a corrupt header") from None


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read only the metadata of a checkpoint (no tensors)."""
    path = Path(path)
    header = _read_header(path)
    raw = (header.get("__metadata__") or {}).get("robustmoe")
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not a robustmoe-bench checkpoint (no metadata)")
    try:
        meta = jsonsafe.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has corrupt robustmoe-bench metadata") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a robustmoe-bench checkpoint (format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer robustmoe-bench (format {meta['format_version']}); upgrade to read it"
        )
    return meta


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of every tensor in a safetensors file, from its header alone (no data read)."""
    path = Path(path)
    header = _read_header(path)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt header")
    out: dict[str, tuple[int, ...]] = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        shape = v.get("shape") if isinstance(v, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise CheckpointError(f"{path} has a corrupt header (tensor {k!r})")
        out[k] = tuple(shape)
    return out


def _check_weights(path: Path, skeleton: torch.nn.Module) -> None:
    """The file's tensors (extras aside) must be the model's state dict, name for name, shape for shape."""
    have = {k: v for k, v in tensor_shapes(path).items() if not k.startswith(EXTRA_PREFIX)}
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:3])}")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape, e.g. {k} {list(have[k])} (model: {list(want[k])})")
        raise CheckpointError(f"{path}: weights do not match the stored model spec ({'; '.join(parts)})")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model stored in ``path`` (eval mode). Never executes code from the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .errors import ConfigError, RobustMoEError
    from .models import ModelSpec, build_model

    path = Path(path)
    meta = read_meta(path)
    try:
        spec = ModelSpec.from_dict(meta["model"])
        # The metadata asks for a model; before allocating it, build it on the "meta" device (shapes
        # only, no memory) and check that the file's tensors are exactly its weights. A small file
        # whose metadata names a huge model (wrn-28-30: gigabytes) is refused here, not after.
        with torch.device("meta"):
            skeleton = build_model(spec)
        _check_weights(path, skeleton)
        del skeleton
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model from its metadata: {e}") from None
    except CheckpointError:
        raise
    except RobustMoEError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        tensors = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated: {e}") from None
    try:
        model = build_model(spec)
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model from its metadata: {e}") from None
    except RobustMoEError as e:
        raise CheckpointError(f"{path}: {e}") from None
    extra = {k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the stored model spec "
            f"(missing {len(missing)}: {', '.join(missing[:3])}; unexpected {len(unexpected)}: {', '.join(unexpected[:3])})"
        )
    model.to(map_location).eval()
    return Checkpoint(model, meta, extra)
