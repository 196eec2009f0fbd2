"""Adaptive attacks for MoE models: hard argmax routing can mask gradients, so plain PGD overstates
robustness. Three ways around it, each returning x_adv in the eps-ball:

``soft-pgd`` — gradients through a soft relaxation of the routing: hard forward, and in the backward
  pass the routing behaves like the mixture ``sum_j softmax(scores / T)_j * f_j(x)`` over the
  alternative pathways ``f_j``. Concretely the loss is computed on
  ``f_hard(x) + sum_{l, j} (q_lj - stopgrad(q_lj)) * stopgrad(f_{l->j}(x))``, whose value is the hard
  output and whose gradient adds ``f_{l->j}(x) * dq_lj/dx`` to the gradient of the chosen pathway
  (routing held fixed). ``f_{l->j}``: the output with MoE layer ``l`` switched to expert ``j`` and the
  other layers kept at their current choices (first order in the routing); for ``shared`` routers, one
  score vector drives every layer, so ``f_j`` is the whole pathway on expert ``j`` (exact mixture).
  Cost per step: one traced no-grad forward, one forward/backward, and (N-1)·L (layer routers) or
  N-1 (shared) no-grad forwards.

  Top-k gates (k >= 2, any model whose routing adapter can force): the relaxation is over the top-k
  SELECTION. ``f_{l->j}`` is the output with layer ``l``'s set changed minimally to contain ``j`` (its
  lowest-scored chosen expert swapped for ``j``; unchanged if ``j`` is chosen), so for k = 1 it is the
  top-1 relaxation above. The hard forward runs with the selection forced to the current one, so a
  soft-gated model's gradient through its gate WEIGHTS is kept; the relaxation adds the gradient of
  which experts are selected, which the hard top-k has none of.

  Why not ``models.soft_routing``: in the model's masked execution the unchosen experts' channels are
  zeroed again by the routed batch norm and sit at ReLU's kink, so its backward equals the plain
  straight-through gradient (measured: identical input gradients up to 3e-11). It relaxes nothing.

``pathway-forced`` — fix the expert choices with the routing adapter's ``force``, run PGD on that fixed pathway,
  then re-check every candidate under the model's real routing and keep, per example, one that is
  misclassified under real routing. Pathways: ``shared`` routers, every expert ``0..N-1`` (all layers
  share the expert, so this is exhaustive); ``layer`` routers, the tractable set of the N uniform
  pathways (every layer on expert e), each example's clean pathway, and ``random_pathways`` random
  per-example pathways drawn from the attack's generator. Each pathway only attacks the examples still
  robust; early stopping (if on) freezes an example once it is misclassified under REAL routing.

``joint`` — PGD on ``CE(output, y) + router_weight * mean over chosen layers of CE(router scores,
  clean expert)``: push the prediction and the routing away at once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters.routing import RoutingAdapter, random_pathway, uniform_pathway
from ..errors import ConfigError
from .base import positive_float
from .pgd import PGD, pgd_loop
from .router import LayerSpec, check_moe, clean_routing, normalise_layers, router_divergence, select_layers


def _forcing(model: nn.Module, attack: str) -> RoutingAdapter:
    """The model's routing adapter, which must be able to force a pathway."""
    from ..errors import ModelError

    adapter = check_moe(model, attack)
    if not adapter.can_force:
        raise ModelError(f"attack {attack!r} needs to force pathways, which the routing adapter "
                         f"{adapter.name!r} cannot do")
    return adapter


def swap_in(hard: Tensor, scores: Tensor, j: int) -> Tensor:
    """The expert set with ``j`` in it that is closest to ``hard``: ``hard`` itself where ``j`` is chosen,
    else ``hard`` with its lowest-scored member replaced by ``j``. ``hard`` ``[b, k]``, ``scores``
    ``[b, N]`` -> ``[b, k]`` sorted."""
    has = (hard == j).any(dim=1, keepdim=True)
    weakest = scores.gather(1, hard).argmin(dim=1, keepdim=True)  # [b, 1] position in the set
    swapped = hard.scatter(1, weakest, j)
    return torch.where(has, hard, swapped).sort(dim=1).values


@torch.no_grad()
def _real_wrong(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``[b]`` bool: misclassified under the model's real routing."""
    return model(x).argmax(dim=1) != y


class SoftPGD(PGD):
    r"""PGD whose backward pass goes through a softmax-with-temperature relaxation of the routing.

    Arguments:
        eps (float): radius of the ball.
        norm (str): ``"Linf"`` or ``"L2"``. Default: ``"Linf"``.
        seed (int): seed for the random start. Default: 0.
        steps (int): PGD steps. Default: 50.
        step_size (float | None): ``None`` = ``2.5 * eps / steps``. Default: None.
        random_start (bool): random start in the ball. Default: True.
        early_stop (bool): freeze examples once misclassified. Default: True.
        temperature (float): softmax temperature T of the relaxation. Default: 1.0.

    Shape:
        - x: ``[B, C, H, W]`` in [0, 1]; y: ``[B]`` long.
        - output: ``[B, C, H, W]``.

    Example::

        >>> x_adv = create_attack("soft-pgd", eps=0.1, temperature=1.0)(moe_model, x, y)
    """

    name = "soft-pgd"
    requires_moe = True
    requires_forcing = True
    _adapter: RoutingAdapter | None = None

    def __init__(self, eps: float, norm: str = "Linf", *, seed: int = 0, steps: int = 50,
                 step_size: float | None = None, random_start: bool = True, early_stop: bool = True,
                 temperature: float = 1.0, **hyper: object) -> None:
        super().__init__(eps, norm, seed=seed, steps=steps, step_size=step_size, random_start=random_start,
                         early_stop=early_stop, **hyper)
        self.temperature = positive_float("temperature", temperature)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        self._adapter = _forcing(model, self.name)
        try:
            return super().perturb(model, x, y)
        finally:
            self._adapter = None

    def loss(self, model: nn.Module, x_adv: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        adapter = self._adapter
        assert adapter is not None
        names = adapter.layer_names()
        with torch.no_grad(), adapter.trace() as tr0:
            model(x_adv)
        hard = tr0.experts()  # [L, b, k]
        fixed = {name: hard[i] for i, name in enumerate(names)}
        # hard forward with the routing held fixed: the chosen pathway's gradient, no straight-through term
        with adapter.force(fixed), adapter.trace() as tr:
            out = model(x_adv)
        scores = tr.logits()  # still differentiable: forced layers record their router scores
        relaxed = out
        groups = [(0, None)] if adapter.shares_routing else [(i, name) for i, name in enumerate(names)]
        for i, name in groups:
            q = torch.softmax(scores[i] / self.temperature, dim=1)  # [b, N]
            for j in range(q.shape[1]):
                with torch.no_grad():
                    if name is None:  # shared router (top-1): the whole pathway moves to expert j
                        f_j = out.detach() if bool((hard[0] == j).all()) else \
                            _forced(adapter, model, x_adv, {"*": torch.full_like(hard[0], j)})
                    else:
                        f_j = _forced(adapter, model, x_adv, {**fixed, name: swap_in(hard[i], scores[i].detach(), j)})
                qj = q[:, j:j + 1]
                relaxed = relaxed + (qj - qj.detach()) * f_j
        done = out.detach().argmax(dim=1) != y
        return F.cross_entropy(relaxed, y), done


@torch.no_grad()
def _forced(adapter: RoutingAdapter, model: nn.Module, x: Tensor, pathway: dict) -> Tensor:
    with adapter.force(pathway):
        return model(x)


class PathwayForced(PGD):
    r"""Attack each fixed expert pathway, keep candidates that fool the model under its real routing.

    Arguments:
        eps (float): radius of the ball.
        norm (str): ``"Linf"`` or ``"L2"``. Default: ``"Linf"``.
        seed (int): seed for random starts and random pathways. Default: 0.
        steps (int): PGD steps per pathway. Default: 50.
        step_size (float | None): ``None`` = ``2.5 * eps / steps``. Default: None.
        random_start (bool): random start in the ball. Default: True.
        early_stop (bool): freeze an example once misclassified under real routing. Default: True.
        random_pathways (int): extra random per-example pathways for ``layer`` routers. Default: 4.

    Shape:
        - x: ``[B, C, H, W]`` in [0, 1]; y: ``[B]`` long.
        - output: ``[B, C, H, W]``: per example, a candidate misclassified under real routing if any
          pathway found one, else the last pathway's candidate.

    Example::

        >>> x_adv = create_attack("pathway-forced", eps=0.1, steps=50)(moe_model, x, y)
    """

    name = "pathway-forced"
    requires_moe = True
    requires_forcing = True

    def __init__(self, eps: float, norm: str = "Linf", *, seed: int = 0, steps: int = 50,
                 step_size: float | None = None, random_start: bool = True, early_stop: bool = True,
                 random_pathways: int = 4, **hyper: object) -> None:
        super().__init__(eps, norm, seed=seed, steps=steps, step_size=step_size, random_start=random_start,
                         early_stop=early_stop, **hyper)
        if isinstance(random_pathways, bool) or not isinstance(random_pathways, int) or random_pathways < 0:
            raise ConfigError(f"random_pathways must be an integer >= 0, got {random_pathways!r}")
        self.random_pathways = random_pathways

    def pathways(self, model: nn.Module, x: Tensor) -> list[dict[str, Tensor]]:
        """The forced-routing specs tried, in order (see the module docstring); each maps every MoE
        layer to ``[B, k]`` expert sets. Top-k: the uniform pathways are the N rotations
        ``{e, ..., e+k-1 mod N}`` and random pathways draw a random k-set per layer and input."""
        adapter = _forcing(model, self.name)
        b = x.shape[0]
        n = max(adapter.num_experts())
        out = [uniform_pathway(adapter, e, b, x.device) for e in range(n)]
        if adapter.shares_routing:
            return out
        names = adapter.layer_names()
        clean, _ = clean_routing(model, x)
        out.append({name: clean[i] for i, name in enumerate(names)})
        for _ in range(self.random_pathways):
            out.append(random_pathway(adapter, b, self.generator, x.device))
        return out

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        adapter = _forcing(model, self.name)
        x_best = x.clone()
        robust = ~_real_wrong(model, x, y)  # clean mistakes are already adversarial (x itself)
        for pw in self.pathways(model, x):
            todo = robust.nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            spec = {k: v[todo] for k, v in pw.items()}
            xs, ys = x[todo], y[todo]

            def loss_fn(m: nn.Module, xa: Tensor, ya: Tensor, idx: Tensor, spec: dict = spec) -> tuple[Tensor, Tensor]:
                sub = {k: v[idx] for k, v in spec.items()}
                with adapter.force(sub):
                    loss = F.cross_entropy(m(xa), ya)
                done = _real_wrong(m, xa.detach(), ya) if self.early_stop else torch.zeros_like(ya, dtype=torch.bool)
                return loss, done

            cand = pgd_loop(model, xs, ys, self.start(xs), loss_fn=loss_fn, steps=self.steps,
                            step_size=self.step_size, eps=self.eps, norm=self.norm, early_stop=self.early_stop)
            broken = _real_wrong(model, cand, ys)  # the re-check under the model's real routing
            x_best[todo] = cand  # unbroken examples keep the latest candidate (any in-ball point will do)
            robust[todo[broken]] = False
        return x_best


class Joint(PGD):
    r"""PGD on ``CE(output, y) + router_weight * router divergence`` (output and routing at once).

    Arguments:
        eps (float): radius of the ball.
        norm (str): ``"Linf"`` or ``"L2"``. Default: ``"Linf"``.
        seed (int): seed for the random start. Default: 0.
        steps (int): PGD steps. Default: 50.
        step_size (float | None): ``None`` = ``2.5 * eps / steps``. Default: None.
        random_start (bool): random start in the ball. Default: True.
        early_stop (bool): freeze examples once misclassified. Default: True.
        router_weight (float): lambda, weight of the router term. Default: 1.0.
        layers (str | list[str]): MoE layers of the router term (mean over them). Default: ``"all"``.

    Shape:
        - x: ``[B, C, H, W]`` in [0, 1]; y: ``[B]`` long.
        - output: ``[B, C, H, W]``.

    Example::

        >>> x_adv = create_attack("joint", eps=0.1, router_weight=1.0)(moe_model, x, y)
    """

    name = "joint"
    requires_moe = True

    def __init__(self, eps: float, norm: str = "Linf", *, seed: int = 0, steps: int = 50,
                 step_size: float | None = None, random_start: bool = True, early_stop: bool = True,
                 router_weight: float = 1.0, layers: LayerSpec = "all", **hyper: object) -> None:
        super().__init__(eps, norm, seed=seed, steps=steps, step_size=step_size, random_start=random_start,
                         early_stop=early_stop, **hyper)
        try:
            self.router_weight = float(router_weight)
        except (TypeError, ValueError):
            raise ConfigError(f"router_weight must be a number, got {router_weight!r}") from None
        if self.router_weight < 0:
            raise ConfigError(f"router_weight must be >= 0, got {router_weight!r}")
        self.layers = normalise_layers(layers)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        adapter = check_moe(model, self.name)
        sel = select_layers(model, self.layers)
        clean, _ = clean_routing(model, x)

        def loss_fn(m: nn.Module, xa: Tensor, ya: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
            with adapter.trace() as tr:
                out = m(xa)
            # mean over layers, so router_weight means the same for any depth
            div = router_divergence(tr.logits(), clean[:, idx], None, sel, "ce") / len(sel)
            loss = F.cross_entropy(out, ya) + self.router_weight * div.mean()
            return loss, out.detach().argmax(dim=1) != ya

        return pgd_loop(model, x, y, self.start(x), loss_fn=loss_fn, steps=self.steps, step_size=self.step_size,
                        eps=self.eps, norm=self.norm, early_stop=self.early_stop)


__all__ = ["SoftPGD", "PathwayForced", "Joint"]
