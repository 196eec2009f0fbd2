"""What the routing analyses share: attack resolution, the traced forward, the MoE check and the
utilisation record. Dissection (:mod:`.dissect`), pathway IoU (:mod:`.iou`) and fixed experts read it;
it imports neither of them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..adapters.expert_use import COLLAPSED_SHARE, collapse, utilisation
from ..errors import ConfigError, ModelError

#: An attack as the attacks package builds it: ``atk(model, x, y) -> x_adv`` (same shape as ``x``).
AttackFn = Callable[[torch.nn.Module, Tensor, Tensor], Tensor]

_PGD_NAME = re.compile(r"^pgd-?(\d+)$")


def require_moe(model: torch.nn.Module, what: str = "this analysis") -> None:
    """Raise :class:`ModelError` unless ``model`` has routers: one of our MoE models, or a model with a
    routing adapter (``--router-modules`` / ``--adapter``)."""
    from ..adapters.routing import get_adapter

    if get_adapter(model) is not None:
        return
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ModelError(f"{what} needs routers, but {type(model).__name__} has no routing adapter "
                         "(give --router-modules REGEX or --adapter module:callable)")
    raise ModelError(
        f"{what} needs an MoE model (with routers), but this is a {spec.kind!r} model ({spec.describe()})"
    )


def check_examples(x: Tensor, y: Tensor, batch_size: int) -> None:
    """Raise :class:`ConfigError` unless ``x`` is ``[n, C, H, W]`` with labels ``y`` ``[n]``, ``n >= 1``, and
    ``batch_size`` is positive: the inputs every routing analysis takes."""
    if x.ndim != 4 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ConfigError(f"need x [n, C, H, W] and y [n] with n >= 1, got {tuple(x.shape)} and {tuple(y.shape)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")


def analysis_eps(model: torch.nn.Module, eps: float | None) -> float:
    """``eps``, or the usual radius of the data set ``model`` was built for (ours: its spec; an external
    model: the one it was wrapped for); :class:`ConfigError` when neither is known."""
    if eps is not None:
        return float(eps)
    from ..adapters.external import model_dataset
    from ..data import get_dataset_info

    dataset = model_dataset(model)
    if dataset is None:
        raise ConfigError("the model does not say which data set it is for; give eps")
    return float(get_dataset_info(dataset).eps)


def resolve_attack(
    attack: str | AttackFn, eps: float, *, seed: int = 0, norm: str = "Linf", **extra: Any
) -> tuple[str, dict[str, Any], AttackFn]:
    """Turn an attack name (``pgd50``, ``pgd-50``, ``router-untargeted``, any registered attack) or a
    callable into ``(display name, parameters, atk)``.

    ``pgdK`` means PGD with K steps; ``router-untargeted`` attacks every MoE layer's router.
    ``extra``: further hyper-parameters for a named attack (e.g. ``steps``).
    """
    if callable(attack):
        name = str(getattr(attack, "name", type(attack).__name__))
        return name, _params_of(attack), attack
    text = attack.strip().lower()
    hyper: dict[str, Any] = {}
    m = _PGD_NAME.match(text)
    if m:
        steps = int(m.group(1))
        if steps < 1:
            raise ConfigError(f"attack {attack!r}: PGD needs at least one step")
        base, hyper, display = "pgd", {"steps": steps}, f"pgd-{steps}"
    elif text == "router-untargeted":
        base, hyper, display = text, {"layers": "all"}, text
    else:
        base, display = text, text
    hyper.update(extra)
    if base != "pgd" and "steps" in extra:
        display = f"{display}-{extra['steps']}"
    from ..attacks import create_attack  # lazy: the attacks package is heavier than this module

    try:
        atk = create_attack(base, eps, norm=norm, seed=seed, **hyper)
    except KeyError as e:  # registries raise KeyError naming what they hold
        raise ConfigError(str(e).strip("'\"")) from None
    return display, _params_of(atk) or {"eps": eps, "norm": norm, "seed": seed, **hyper}, atk


def _params_of(atk: object) -> dict[str, Any]:
    """An attack's hyper-parameters as JSON-able dict (``Attack.params()`` or a ``params`` dict)."""
    p = getattr(atk, "params", None)
    if callable(p):
        p = p()
    return dict(p) if isinstance(p, dict) else {}


@torch.no_grad()
def predict_and_route(model: torch.nn.Module, x: Tensor) -> tuple[Tensor, Tensor, list[str]]:
    """One traced forward: predictions ``[B]`` long, chosen expert sets ``[L, B, k]`` long (sorted), MoE
    layer names ``[L]``."""
    from ..adapters.routing import require_adapter

    with require_adapter(model, "routing").trace() as tr:
        logits = model(x)
    return logits.argmax(dim=1), tr.experts(), tr.layer_names


@dataclass
class Utilisation:
    """``share[l][e]``: fraction of inputs routed to expert ``e`` in layer ``l``; ``entropy_bits[l]``:
    entropy of that distribution (max ``log2 N`` = perfectly balanced, 0 = one expert only).
    Collapse metrics (:func:`collapse`; absent in results written before they existed):
    ``busiest_share[l]``, ``entropy_normalised[l]`` and ``collapsed`` (some layer's busiest expert takes
    at least :data:`~robustmoe_bench.adapters.expert_use.COLLAPSED_SHARE` of the inputs)."""

    share: list[list[float]]
    entropy_bits: list[float]
    mean_entropy_bits: float
    busiest_share: Optional[list[float]] = None
    entropy_normalised: Optional[list[float]] = None
    collapsed: Optional[bool] = None

    @classmethod
    def of(cls, experts: Tensor, n_experts: int) -> "Utilisation":
        """From expert sets ``[L, B(, k)]``."""
        share, ent = utilisation(experts, n_experts)
        busiest, norm = collapse(experts, n_experts)
        return cls(share, ent, sum(ent) / len(ent), busiest, norm, any(b >= COLLAPSED_SHARE for b in busiest))


__all__ = ["AttackFn", "Utilisation", "analysis_eps", "check_examples", "collapse", "predict_and_route", "require_moe", "resolve_attack", "utilisation"]
