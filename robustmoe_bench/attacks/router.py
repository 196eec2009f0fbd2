"""Router-targeted attacks: perturbations aimed at the routing decisions rather than the prediction.

* ``router-untargeted`` maximises the divergence between the router scores on ``x + delta`` and the
  clean routing decision, summed over the chosen MoE layers (cross-entropy of the scores against the
  clean expert, or KL from the clean score distribution).
* ``router-targeted`` forces one expert: it minimises the cross-entropy of the router scores against
  ``target`` on the chosen layers.

Both are PGD on the router scores (gate logits) of the routing adapter's trace (``tr.logits()`` keeps
autograd history), so they work for any model with a routing adapter, top-1 or top-k; for top-k the
clean routing is a set of experts (see ``robustmoe_bench.adapters.routing``). With
``early_stop`` an example is frozen once the attack has succeeded on it: untargeted, the expert changed
in at least one chosen layer; targeted, every chosen layer picks ``target``. For per-layer routing-change
rates over *all* layers, pass ``early_stop=False`` (otherwise an example stops once any layer flipped).

The helpers here (clean routing, layer selection, divergence) are shared with the adaptive attacks.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters.routing import RoutingAdapter, require_adapter, routing_changed
from ..errors import ConfigError
from .pgd import PGD

LayerSpec = str | Sequence[str]
DIVERGENCES = ("ce", "kl")


def check_moe(model: nn.Module, attack: str) -> RoutingAdapter:
    """The model's routing adapter; :class:`ModelError` if it has no routers."""
    return require_adapter(model, f"attack {attack!r}")


def normalise_layers(layers: LayerSpec) -> str | tuple[str, ...]:
    """``"all"``, one MoE layer name, or a sequence of names -> ``"all"`` or a tuple of names."""
    if isinstance(layers, str):
        return "all" if layers == "all" else (layers,)
    names = tuple(str(n) for n in layers)
    if not names:
        raise ConfigError("layers must be 'all', a layer name, or a non-empty list of MoE layer names")
    return names


def select_layers(model: nn.Module, layers: str | tuple[str, ...]) -> list[int]:
    """Positions (in execution order) of the chosen MoE layers; unknown names raise ConfigError."""
    names = require_adapter(model, "layer selection").layer_names()
    if layers == "all":
        return list(range(len(names)))
    unknown = [n for n in layers if n not in names]
    if unknown:
        raise ConfigError(f"unknown MoE layer(s) {', '.join(unknown)}; known: {', '.join(names)}")
    return [names.index(n) for n in layers]


@torch.no_grad()
def clean_routing(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Routing of the clean inputs: expert sets ``[L, B, k]`` long and per-layer router scores ``[B, N]``."""
    with require_adapter(model, "routing").trace() as tr:
        model(x)
    return tr.experts(), [lg.detach() for lg in tr.logits()]


def router_divergence(logits: list[Tensor], clean_experts: Tensor, clean_logits: list[Tensor] | None,
                      sel: list[int], kind: str = "ce") -> Tensor:
    """Per-example divergence ``[b]`` summed over layers ``sel``: CE of the scores against the clean
    expert, or KL(softmax(clean scores) || softmax(scores)). ``clean_experts``: ``[L, b, k]`` sets.

    For top-k (k >= 2) the CE term is the mean over the k clean experts of ``-log softmax(scores)_e``:
    raising it moves probability off the whole clean set (for k = 1 it is the plain CE)."""
    total = logits[0].new_zeros(logits[0].shape[0])
    for i in sel:
        if kind == "ce":
            logp = F.log_softmax(logits[i], dim=1)
            total = total - logp.gather(1, clean_experts[i]).mean(dim=1)
        else:
            assert clean_logits is not None
            p = F.log_softmax(clean_logits[i], dim=1)
            total = total + F.kl_div(F.log_softmax(logits[i], dim=1), p, log_target=True, reduction="none").sum(1)
    return total


class RouterAttack(PGD):
    """Shared machinery: MoE check, layer selection, clean routing, PGD on a routing loss."""

    requires_moe = True

    def __init__(self, eps: float, norm: str = "Linf", *, seed: int = 0, steps: int = 50,
                 step_size: float | None = None, random_start: bool = True, early_stop: bool = True,
                 layers: LayerSpec = "all", **hyper: object) -> None:
        super().__init__(eps, norm, seed=seed, steps=steps, step_size=step_size, random_start=random_start,
                         early_stop=early_stop, **hyper)
        self.layers = normalise_layers(layers)
        self._sel: list[int] = []
        self._clean: Tensor | None = None
        self._clean_logits: list[Tensor] = []

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        check_moe(model, self.name)
        self._sel = select_layers(model, self.layers)
        self._prepare(model)
        self._clean, self._clean_logits = clean_routing(model, x)
        try:
            return super().perturb(model, x, y)
        finally:
            self._clean, self._clean_logits = None, []

    def _prepare(self, model: nn.Module) -> None:
        """Validate call-time settings that depend on the model."""


class RouterUntargeted(RouterAttack):
    r"""Change the routing: maximise the divergence of the router scores from the clean routing.

    Arguments:
        eps (float): radius of the ball.
        norm (str): ``"Linf"`` or ``"L2"``. Default: ``"Linf"``.
        seed (int): seed for the random start. Default: 0.
        steps (int): PGD steps. Default: 50.
        step_size (float | None): ``None`` = ``2.5 * eps / steps``. Default: None.
        random_start (bool): random start in the ball. Default: True.
        early_stop (bool): freeze an example once any chosen layer changed its expert. Default: True.
        layers (str | list[str]): ``"all"``, one MoE layer name, or a list. Default: ``"all"``.
        divergence (str): ``"ce"`` (scores vs the clean expert) or ``"kl"`` (vs the clean score
            distribution). Default: ``"ce"``.

    Shape:
        - x: ``[B, C, H, W]`` in [0, 1]; y: ``[B]`` long (unused by the loss; kept for the common API).
        - output: ``[B, C, H, W]``.

    Example::

        >>> x_adv = create_attack("router-untargeted", eps=0.1, layers="all")(moe_model, x, y)
    """

    name = "router-untargeted"

    def __init__(self, eps: float, norm: str = "Linf", *, seed: int = 0, steps: int = 50,
                 step_size: float | None = None, random_start: bool = True, early_stop: bool = True,
                 layers: LayerSpec = "all", divergence: str = "ce", **hyper: object) -> None:
        super().__init__(eps, norm, seed=seed, steps=steps, step_size=step_size, random_start=random_start,
                         early_stop=early_stop, layers=layers, **hyper)
        if divergence not in DIVERGENCES:
            raise ConfigError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
        self.divergence = divergence

    def loss(self, model: nn.Module, x_adv: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        assert self._clean is not None
        with require_adapter(model, self.name).trace() as tr:
            model(x_adv)
        clean = self._clean[:, idx]
        clean_logits = [lg[idx] for lg in self._clean_logits]
        div = router_divergence(tr.logits(), clean, clean_logits, self._sel, self.divergence)
        changed = routing_changed(tr.experts()[self._sel], clean[self._sel]).any(dim=0)
        return div.mean(), changed


class RouterTargeted(RouterAttack):
    r"""Force one expert: minimise the cross-entropy of the router scores against ``target``.

    Arguments:
        eps (float): radius of the ball.
        norm (str): ``"Linf"`` or ``"L2"``. Default: ``"Linf"``.
        seed (int): seed for the random start. Default: 0.
        steps (int): PGD steps. Default: 50.
        step_size (float | None): ``None`` = ``2.5 * eps / steps``. Default: None.
        random_start (bool): random start in the ball. Default: True.
        early_stop (bool): freeze an example once every chosen layer picks ``target``. Default: True.
        layers (str | list[str]): ``"all"``, one MoE layer name, or a list. Default: ``"all"``.
        target (int): the expert to force, in ``[0, experts)``. Default: 0.

    Shape:
        - x: ``[B, C, H, W]`` in [0, 1]; y: ``[B]`` long (unused by the loss).
        - output: ``[B, C, H, W]``.

    Example::

        >>> x_adv = create_attack("router-targeted", eps=0.1, target=1)(moe_model, x, y)
    """

    name = "router-targeted"

    def __init__(self, eps: float, norm: str = "Linf", *, seed: int = 0, steps: int = 50,
                 step_size: float | None = None, random_start: bool = True, early_stop: bool = True,
                 layers: LayerSpec = "all", target: int = 0, **hyper: object) -> None:
        super().__init__(eps, norm, seed=seed, steps=steps, step_size=step_size, random_start=random_start,
                         early_stop=early_stop, layers=layers, **hyper)
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ConfigError(f"target must be an expert index >= 0, got {target!r}")
        self.target = target

    def _prepare(self, model: nn.Module) -> None:
        n = min(require_adapter(model, self.name).num_experts())
        if self.target >= n:
            raise ConfigError(f"target expert {self.target} is out of range: the model has {n} experts")

    def loss(self, model: nn.Module, x_adv: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        with require_adapter(model, self.name).trace() as tr:
            model(x_adv)
        logits = tr.logits()
        tgt = torch.full((x_adv.shape[0],), self.target, dtype=torch.long, device=x_adv.device)
        ce = sum(F.cross_entropy(logits[i], tgt, reduction="none") for i in self._sel)
        # top-k: reached once the target is among the chosen experts of every selected layer
        reached = (tr.experts()[self._sel] == self.target).any(dim=-1).all(dim=0)
        return -ce.mean(), reached  # type: ignore[union-attr]


__all__ = ["RouterAttack", "RouterUntargeted", "RouterTargeted", "check_moe", "clean_routing",
           "normalise_layers", "router_divergence", "select_layers"]
