"""Models robustmoe-bench did not build: load any PyTorch model and make it look like ours to the attacks.

:class:`ExternalModel` wraps an ``nn.Module`` so that it takes images in [0, 1] of the data set's shape
and returns logits ``[B, classes]``:

* input adaptation: a grey image is repeated over 3 channels and/or resized (bilinear) when the model
  takes another ``input_size``; both are differentiable, so attacks stay in the data set's pixel space;
* ``normalize=(mean, std)`` is applied INSIDE the wrapper, so every attack works on pixels;
* tuple / list / dict outputs (e.g. ``(logits, aux_loss)``) are reduced to the logits: ``output_key``
  (an index or a key), else the first tensor of shape ``[B, classes]``;
* ``routing_adapter``: the model's :class:`~robustmoe_bench.adapters.routing.RoutingAdapter` (or None).

:func:`load_external` builds one from ``module:factory`` with keyword arguments and a weights file
(safetensors, or a torch file read with ``weights_only=True``: never unpickling code). Every problem a
user can cause raises :class:`~robustmoe_bench.errors.ModelError` with one clear line.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, ModelError
from .routing import HookAdapter, RoutingAdapter


# --------------------------------------------------------------------------- parsing
def parse_value(text: str) -> Any:
    """``--model-arg`` value: bool (true/false), int, float, else the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """``["num_classes=10", "pretrained=false"]`` -> ``{"num_classes": 10, "pretrained": False}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"--model-arg needs key=value with a Python name as key, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def parse_normalize(text: Optional[str]) -> Optional[tuple[list[float], list[float]]]:
    """``"0.5,0.5,0.5/0.25,0.25,0.25"`` -> ``([0.5]*3, [0.25]*3)``."""
    if text is None:
        return None
    mean_s, sep, std_s = text.partition("/")
    try:
        if not sep:
            raise ValueError
        mean = [float(v) for v in mean_s.split(",")]
        std = [float(v) for v in std_s.split(",")]
    except ValueError:
        raise ConfigError(f"--normalize needs MEAN/STD such as 0.5,0.5,0.5/0.25,0.25,0.25, got {text!r}") from None
    if len(mean) != len(std):
        raise ConfigError(f"--normalize: {len(mean)} means but {len(std)} standard deviations")
    if any(s <= 0 for s in std):
        raise ConfigError(f"--normalize: standard deviations must be positive, got {std}")
    return mean, std


def parse_input_size(text: Optional[str]) -> Optional[tuple[int, int, int]]:
    """``"3,32,32"`` (C,H,W) -> ``(3, 32, 32)``."""
    if text is None:
        return None
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise ConfigError(f"--input-size needs C,H,W such as 3,32,32, got {text!r}")
    return dims  # type: ignore[return-value]


# --------------------------------------------------------------------------- the wrapper
class ExternalModel(nn.Module):
    """``net`` seen as a robustmoe-bench model: images in [0, 1] ``[B, *data_shape]`` -> logits
    ``[B, num_classes]`` (see the module docstring). Call :meth:`probe` once before use."""

    def __init__(self, net: nn.Module, *, num_classes: int, data_shape: Sequence[int], dataset: Optional[str] = None,
                 input_size: Optional[Sequence[int]] = None, normalize: Optional[tuple[list[float], list[float]]] = None,
                 output_key: Optional[str | int] = None, source: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self.net = net
        self.num_classes = int(num_classes)
        self.data_shape = tuple(int(v) for v in data_shape)
        self.input_size = tuple(int(v) for v in (input_size or self.data_shape))
        self.dataset = dataset
        self.output_key = output_key
        self.source = dict(source or {})
        self.routing_adapter: Optional[RoutingAdapter] = None
        c_in, c = self.data_shape[0], self.input_size[0]
        if c != c_in and not (c_in == 1 and c == 3):
            raise ConfigError(f"--input-size has {c} channels but the data has {c_in}; only equal channels or "
                              "grey -> 3 channels can be adapted")
        if normalize is not None:
            mean, std = normalize
            if len(mean) not in (1, c):
                raise ConfigError(f"--normalize has {len(mean)} values but the model takes {c} channels")
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.normalize = normalize
        self._pick: Optional[tuple[str, Any]] = None  # resolved by probe(): ("index", i) / ("key", k) / None

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[B, *data_shape]`` in [0, 1] -> logits ``[B, num_classes]``."""
        return self._reduce(self.net(self.prepare(x)), x.shape[0])

    def prepare(self, x: Tensor) -> Tensor:
        """Pixels in [0, 1] -> what ``net`` takes: channels repeated, resized, normalised (differentiable)."""
        if self.input_size[0] != x.shape[1]:
            x = x.expand(-1, self.input_size[0], -1, -1)
        if tuple(self.input_size[1:]) != tuple(x.shape[2:]):
            x = F.interpolate(x, size=self.input_size[1:], mode="bilinear", align_corners=False)
        if self.normalize is not None:
            x = (x - self.mean) / self.std
        return x

    def _reduce(self, out: Any, batch: int) -> Tensor:
        if self._pick is None:
            return self._check_logits(out, batch, "the model's output")
        return out[self._pick[1]]

    def _check_logits(self, t: Any, batch: int, what: str) -> Tensor:
        if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[0] != batch or t.shape[1] != self.num_classes:
            raise ModelError(f"{what} is {_describe(t)}, not logits [{batch}, {self.num_classes}] "
                             "(no class dimension; for tuple/dict outputs use --output-key)")
        return t

    @torch.no_grad()
    def probe(self) -> None:
        """One forward on 2 random inputs: resolve the output reduction, check the class dimension, and
        let the routing adapter learn its layers' expert counts. Raises :class:`ModelError`."""
        was = self.training
        self.eval()
        dev = next(self.parameters(), torch.empty(0)).device
        x = torch.rand(2, *self.data_shape, generator=torch.Generator().manual_seed(0)).to(dev)
        self._pick = None
        try:
            xs = self.prepare(x)
            adapter = self.routing_adapter
            try:
                if adapter is not None:
                    with adapter.trace():
                        out = self.net(xs)
                    adapter.num_experts()
                else:
                    out = self.net(xs)
            except ModelError:
                raise
            except Exception as e:  # noqa: BLE001 -- the user's model: report in one line
                raise ModelError(f"the model failed on inputs of shape {list(xs.shape)}: {type(e).__name__}: "
                                 f"{_first_line(e)} (set --input-size if it takes another size)") from None
            self._pick = self._resolve(out, 2)
        finally:
            self.train(was)

    def _resolve(self, out: Any, batch: int) -> Optional[tuple[str, Any]]:
        key = self.output_key
        if isinstance(out, Tensor):
            if key is not None:
                raise ModelError(f"--output-key {key!r} given but the model returns a single tensor")
            self._check_logits(out, batch, "the model's output")
            return None
        if isinstance(out, (tuple, list)):
            items = list(enumerate(out))
            kind = "index"
        elif isinstance(out, dict) or hasattr(out, "keys"):
            items = [(k, out[k]) for k in out.keys()]
            kind = "key"
        else:
            raise ModelError(f"the model returns {type(out).__name__}; expected logits, a tuple or a dict")
        if key is not None:
            k = int(key) if kind == "index" and str(key).lstrip("-").isdigit() else key
            try:
                value = out[k]
            except (KeyError, IndexError, TypeError):
                have = ", ".join(str(i) for i, _ in items)
                raise ModelError(f"--output-key {key!r} is not in the model's output (it has {have})") from None
            self._check_logits(value, batch, f"output[{k!r}]")
            return kind, k
        for k, v in items:
            if isinstance(v, Tensor) and v.dim() == 2 and v.shape == (batch, self.num_classes):
                return kind, k
        raise ModelError(f"no element of the model's output has the class dimension [{batch}, {self.num_classes}]: "
                         f"{_describe(out)}")

    def describe(self) -> dict[str, Any]:
        """The model's source for the results JSON (enough to rebuild it)."""
        d = {"source": "factory", "arch": self.source.get("factory", type(self.net).__name__), "kind": "external",
             **self.source, "dataset": self.dataset, "num_classes": self.num_classes,
             "input_shape": list(self.data_shape), "input_size": list(self.input_size),
             "normalize": None if self.normalize is None else {"mean": self.normalize[0], "std": self.normalize[1]},
             "output_key": None if self._pick is None else self._pick[1]}
        d["routing"] = None if self.routing_adapter is None else self.routing_adapter.describe()
        return d


def _describe(t: Any) -> str:
    if isinstance(t, Tensor):
        return f"a tensor of shape {list(t.shape)}"
    if isinstance(t, (tuple, list)):
        return f"a {type(t).__name__} of (" + ", ".join(_describe(v) for v in t) + ")"
    if isinstance(t, dict):
        return "a dict of {" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in t.items()) + "}"
    return type(t).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""


def model_record(model: torch.nn.Module) -> dict[str, Any]:
    """What the results record about the model: our ModelSpec dict, or an external model's source
    (factory, arguments, weights and their sha256, normalisation, output key, routing adapter)."""
    spec = getattr(model, "spec", None)
    if spec is not None and hasattr(spec, "to_dict"):
        return spec.to_dict()
    return model.describe()  # type: ignore[operator]


def model_dataset(model: torch.nn.Module) -> Optional[str]:
    """The data set a model was built for (ours: its spec; external: the one it was wrapped for)."""
    spec = getattr(model, "spec", None)
    return spec.dataset if spec is not None else getattr(model, "dataset", None)


# --------------------------------------------------------------------------- loading
def load_factory(spec: str) -> Callable[..., Any]:
    """``"package.module:callable"`` -> the callable. The working directory is importable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--model needs module:factory such as torchvision.models:resnet18, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 -- anything the user's module raises on import
        raise ModelError(f"--model {spec}: cannot import {module_name!r}: {type(e).__name__}: {_first_line(e)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"--model {spec}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"--model {spec}: {attr!r} is not callable")
    return obj


def call_factory(spec: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> nn.Module:
    try:
        net = fn(**kwargs)
    except Exception as e:  # noqa: BLE001 -- the user's factory: one line, not a traceback
        raise ModelError(f"--model {spec}: the factory raised {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(net, nn.Module):
        raise ModelError(f"--model {spec}: the factory returned {type(net).__name__}, not a torch.nn.Module")
    return net


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_weights(path: Path, key: Optional[str] = None) -> dict[str, Tensor]:
    """A state dict from safetensors or a torch file (``weights_only=True``); ``key`` (dotted) selects a
    nested dict such as ``state_dict``. Raises :class:`CheckpointError`."""
    if not path.exists():
        raise CheckpointError(f"weights file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a weights file")
    with path.open("rb") as f:
        head = f.read(16)
    is_st = len(head) >= 9 and head[8:9] == b"{"
    if is_st:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    else:
        import pickle

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{path}: a weights-only load refuses it (it holds Python objects besides tensors: "
                                  f"{_first_line(e)[:160]}); save a state_dict or safetensors") from None
        except Exception as e:  # noqa: BLE001 -- truncated zip, not a torch file, ...
            raise CheckpointError(f"{path}: not a safetensors or torch weights file ({type(e).__name__}: "
                                  f"{_first_line(e)[:160]})") from None
    if key:
        for part in key.split("."):
            if not isinstance(obj, dict) or part not in obj:
                have = ", ".join(map(str, obj.keys())) if isinstance(obj, dict) else type(obj).__name__
                raise CheckpointError(f"{path}: no key {part!r} for --weights-key {key} (it has: {have})")
            obj = obj[part]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        have = ", ".join(f"{k} ({type(v).__name__})" for k, v in list(obj.items())[:6]) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a state dict of tensors (has: {have}); for a nested dict pass --weights-key")
    return obj


def fit_weights(net: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``net`` strictly; a mismatch raises :class:`CheckpointError` naming the first
    mismatched key (in the model's order: missing or misshapen, then keys the model lacks)."""
    own = net.state_dict()
    for k, v in own.items():
        if k not in state:
            raise CheckpointError(f"weights do not fit: {source} has no {k!r} ({len(state)} keys in the file, "
                                  f"{len(own)} in the model)")
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"weights do not fit: {k!r} is {list(state[k].shape)} in {source} but "
                                  f"{list(v.shape)} in the model")
    extra = [k for k in state if k not in own]
    if extra:
        raise CheckpointError(f"weights do not fit: {source} has {extra[0]!r}, which the model does not have")
    net.load_state_dict(state, strict=True)


def load_external(
    factory: str, *, dataset: str, model_args: Optional[dict[str, Any]] = None, weights: Optional[Path] = None,
    weights_key: Optional[str] = None, output_key: Optional[str] = None, normalize: Optional[str] = None,
    input_size: Optional[str] = None, router_modules: Optional[str] = None, router_top_k: int = 1,
    router_forcing: bool = True, adapter: Optional[str] = None,
) -> ExternalModel:
    """Build ``factory(**model_args)``, load ``weights``, wrap it for ``dataset`` and attach a routing
    adapter (generic over ``router_modules``, or ``adapter`` = ``module:callable`` called with the
    model); probes one forward. Every user-caused problem is one :class:`RobustMoEError` line."""
    from ..data import get_dataset_info

    info = get_dataset_info(dataset)
    if router_modules is not None and adapter is not None:
        raise ConfigError("give --router-modules or --adapter, not both")
    args = dict(model_args or {})
    fn = load_factory(factory)
    norm = parse_normalize(normalize)
    size = parse_input_size(input_size)
    net = call_factory(factory, fn, args)
    source: dict[str, Any] = {"factory": factory, "args": args, "weights": None, "weights_sha256": None,
                              "weights_key": weights_key}
    if weights is not None:
        state = read_weights(Path(weights), weights_key)
        fit_weights(net, state, str(weights))
        source["weights"] = str(weights)
        source["weights_sha256"] = sha256_file(Path(weights))
    net.eval()
    model = ExternalModel(net, num_classes=info.num_classes, data_shape=info.input_shape, dataset=info.name,
                          input_size=size, normalize=norm, output_key=output_key, source=source)
    if router_modules is not None:
        model.routing_adapter = HookAdapter(net, router_modules, router_top_k, forcing=router_forcing)
    elif adapter is not None:
        make = load_factory(adapter)
        try:
            ad = make(net)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"--adapter {adapter}: it raised {type(e).__name__}: {_first_line(e)}") from None
        if not isinstance(ad, RoutingAdapter):
            raise ModelError(f"--adapter {adapter}: returned {type(ad).__name__}, not a RoutingAdapter")
        model.routing_adapter = ad
        model.source["adapter"] = adapter
    model.eval()  # inference: batch norm on running statistics, like every model we evaluate
    model.probe()
    return model


def wrap_module(net: nn.Module, *, dataset: str, normalize: Optional[tuple[list[float], list[float]]] = None,
                output_key: Optional[str | int] = None, input_size: Optional[Sequence[int]] = None,
                adapter: Optional[RoutingAdapter] = None) -> ExternalModel:
    """The Python API's way in: wrap an in-memory ``nn.Module`` for ``dataset`` (see :class:`ExternalModel`)."""
    from ..data import get_dataset_info

    info = get_dataset_info(dataset)
    model = ExternalModel(net, num_classes=info.num_classes, data_shape=info.input_shape, dataset=info.name,
                          input_size=input_size, normalize=normalize, output_key=output_key,
                          source={"factory": f"{type(net).__module__}:{type(net).__name__}", "args": None,
                                  "weights": None, "weights_sha256": None})
    model.routing_adapter = adapter
    model.eval()
    model.probe()
    return model


__all__ = ["ExternalModel", "fit_weights", "load_external", "load_factory", "model_dataset", "model_record", "parse_input_size", "parse_model_args",
           "parse_normalize", "parse_value", "read_weights", "wrap_module"]
