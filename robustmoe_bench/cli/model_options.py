"""Options shared by ``evaluate``, ``dissect``, ``iou`` and ``flops``: a model robustmoe-bench did not
build (``--model module:factory`` and friends) besides a checkpoint of our own."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import ConfigError

MODEL = typer.Option(None, "--model", help="Your own model: module:factory returning an nn.Module "
                                           "(e.g. torchvision.models:resnet18), instead of CKPT.")
MODEL_ARG = typer.Option([], "--model-arg", help="key=value passed to the factory (int/float/bool/str; repeatable).")
WEIGHTS = typer.Option(None, "--weights", help="Weights for --model: safetensors or a torch file (read weights-only).")
WEIGHTS_KEY = typer.Option(None, "--weights-key", help="Key of the state dict inside the weights file (e.g. state_dict; dotted for deeper).")
OUTPUT_KEY = typer.Option(None, "--output-key", help="Index or key of the logits in a tuple/dict output (default: the first [B, classes] tensor).")
NORMALIZE = typer.Option(None, "--normalize", help="MEAN/STD applied inside the model, e.g. 0.5,0.5,0.5/0.25,0.25,0.25.")
INPUT_SIZE = typer.Option(None, "--input-size", help="C,H,W the model takes, if not the data set's (grey images are repeated to 3 channels, sizes resized).")
ROUTER_MODULES = typer.Option(None, "--router-modules", help="Regex (full match) of the modules whose outputs are router logits [B, N].")
ROUTER_TOP_K = typer.Option(1, "--router-top-k", help="Experts chosen per input and layer (top-k of the router logits).")
ROUTER_FORCING = typer.Option(True, "--router-forcing/--no-router-forcing",
                              help="Let the generic adapter force pathways (masking router logits).")
ADAPTER = typer.Option(None, "--adapter", help="module:callable returning a RoutingAdapter for your model (see docs/DEVELOPING.md).")
DATASET = typer.Option(None, "--dataset", help="Data set of --model (classes, image shape, eps), e.g. fashion-mnist, cifar10.")


@dataclass
class ModelOptions:
    """The parsed ``--model`` options of one command."""

    model: Optional[str] = None
    model_args: list[str] = field(default_factory=list)
    weights: Optional[Path] = None
    weights_key: Optional[str] = None
    output_key: Optional[str] = None
    normalize: Optional[str] = None
    input_size: Optional[str] = None
    router_modules: Optional[str] = None
    router_top_k: int = 1
    router_forcing: bool = True
    adapter: Optional[str] = None
    dataset: Optional[str] = None

    def check(self, ckpt: Optional[Path]) -> None:
        """One checkpoint or one --model; --model's options only with --model."""
        if ckpt is not None and self.model is not None:
            raise ConfigError("give a checkpoint or --model, not both")
        if ckpt is None and self.model is None:
            raise ConfigError("give a checkpoint or --model module:factory")
        if self.model is None:
            used = [flag for flag, v in (("--model-arg", self.model_args), ("--weights", self.weights),
                                         ("--weights-key", self.weights_key), ("--output-key", self.output_key),
                                         ("--normalize", self.normalize), ("--input-size", self.input_size),
                                         ("--router-modules", self.router_modules), ("--adapter", self.adapter),
                                         ("--dataset", self.dataset)) if v]
            if used:
                raise ConfigError(f"{used[0]} applies to --model only (a checkpoint carries its model)")
        elif self.dataset is None:
            raise ConfigError("--model needs --dataset (the data set gives classes, image shape and eps)")

    def load(self) -> Any:
        """The :class:`~robustmoe_bench.adapters.ExternalModel` (probed; bad input -> RobustMoEError)."""
        from ..adapters.external import load_external, parse_model_args

        assert self.model is not None and self.dataset is not None
        return load_external(
            self.model, dataset=self.dataset, model_args=parse_model_args(self.model_args), weights=self.weights,
            weights_key=self.weights_key, output_key=self.output_key, normalize=self.normalize,
            input_size=self.input_size, router_modules=self.router_modules, router_top_k=self.router_top_k,
            router_forcing=self.router_forcing, adapter=self.adapter,
        )


def load_model(ckpt: Optional[Path], opts: ModelOptions) -> Any:
    """Our checkpoint's model or the external model."""
    opts.check(ckpt)
    if ckpt is not None:
        from ..checkpoint import load_checkpoint

        return load_checkpoint(ckpt).model
    return opts.load()


def model_label(ckpt: Optional[Path], opts: ModelOptions) -> str:
    return ckpt.name if ckpt is not None else str(opts.model)


def model_description(model: Any) -> str:
    spec = getattr(model, "spec", None)
    if spec is not None:
        return spec.describe()
    src = model.source
    ad = model.routing_adapter
    route = "" if ad is None else f", {ad.name} adapter, top-{ad.top_k}, {len(ad.layer_names())} MoE layers"
    return f"{src.get('factory')} ({model.dataset}{route})"


__all__ = ["ModelOptions", "load_model", "model_description", "model_label"]
