"""Projected gradient descent (Madry et al.): the PGD-k of the evaluation protocol, and the shared
projected-gradient loop that the router and adaptive attacks reuse with their own losses.

Early stopping (``early_stop=True``, the default) freezes an example as soon as the attack has
succeeded on it (for PGD: the current iterate is misclassified) and drops it from every later
forward/backward pass. Why this cannot make the evaluation weaker:

* a frozen example keeps the iterate that was *observed* to be misclassified, so it stays
  misclassified in the returned tensor;
* an example that is never frozen follows exactly the trajectory it would follow without freezing,
  because every step is per-example: the sign (L-inf) or the per-example normalisation (L2) removes the
  loss's batch-size scaling, and eval-mode models treat examples independently.

So every example that is robust with early stopping is robust without it: robust accuracy with
early stopping is <= robust accuracy without (equal up to floating-point batching effects on exact
ties). It is also where the speed-up comes from: broken examples cost nothing after they break.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Attack, positive_float, positive_int

#: ``loss_fn(model, x_adv, y, idx) -> (loss, done)``: ``x_adv`` ``[b, C, H, W]`` (requires grad) and ``y``
#: ``[b]`` are the still-active examples, ``idx`` ``[b]`` their positions in the full batch (to index
#: per-example state such as forced pathways). ``loss`` is a scalar to MAXIMISE; ``done`` ``[b]`` bool
#: marks examples on which the attack has already succeeded at ``x_adv`` (frozen when early stopping).
LossFn = Callable[[nn.Module, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def ce_loss(model: nn.Module, x_adv: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy (as torchattacks computes it, so the iterates match bit for bit);
    ``done`` = misclassified."""
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits.detach().argmax(dim=1) != y


def pgd_loop(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_start: Tensor,
    *,
    loss_fn: LossFn,
    steps: int,
    step_size: float,
    eps: float,
    norm: str,
    early_stop: bool,
) -> Tensor:
    """Projected gradient ascent on ``loss_fn`` from ``x_start``.

    L-inf: ``x += step_size * sign(grad)``; L2: ``x += step_size * grad / ||grad||_2``; then projection
    onto the eps-ball around ``x`` and [0, 1]. With ``early_stop`` only the examples not yet ``done``
    are forwarded each step and ``done`` ones keep the iterate at which they succeeded.

    Shape: ``x``, ``x_start``: ``[B, C, H, W]``; ``y``: ``[B]`` -> ``[B, C, H, W]``.
    """
    x_adv = x_start.detach().clone()
    active = torch.arange(x.shape[0], device=x.device)
    view = (-1,) + (1,) * (x.dim() - 1)
    for _ in range(steps):
        if active.numel() == 0:
            break
        xa = x_adv.index_select(0, active).requires_grad_(True)
        ya = y.index_select(0, active)
        loss, done = loss_fn(model, xa, ya, active)
        (grad,) = torch.autograd.grad(loss, xa, allow_unused=True)
        if grad is None:  # the loss does not depend on the input (e.g. every router output forced)
            grad = torch.zeros_like(xa)
        xa = xa.detach()
        x0 = x.index_select(0, active)
        if norm == "Linf":
            # same operation order as torchattacks.PGD so that identical starts give identical iterates
            stepped = xa + step_size * grad.sign()
            delta = torch.clamp(stepped - x0, min=-eps, max=eps)
        else:
            g = grad.flatten(1).norm(dim=1).view(view) + 1e-10
            stepped = xa + step_size * grad / g
            delta = stepped - x0
            factor = torch.clamp(eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12), max=1.0)
            delta = delta * factor.view(view)
        new = torch.clamp(x0 + delta, min=0, max=1)
        if early_stop:
            keep = ~done
            x_adv[active[keep]] = new[keep]
            active = active[keep]
        else:
            x_adv[active] = new
    return x_adv


class PGD(Attack):
    r"""PGD with cross-entropy loss and a random start (the evaluation's PGD-k, k=50 by default).

    Arguments:
        eps (float): radius of the ball.
        norm (str): ``"Linf"`` (signed-gradient step) or ``"L2"`` (normalised-gradient step). Default: ``"Linf"``.
        seed (int): seed for the random start. Default: 0.
        steps (int): number of steps. Default: 50.
        step_size (float | None): step length; ``None`` means ``2.5 * eps / steps``. Default: None.
        step_fraction (float | None): step length as a fraction of ``eps`` (``0.25``: the AdvMoE public
            code's evaluation step, 2/255 at 8/255); exclusive with ``step_size``. Default: None.
        random_start (bool): start at a random point of the ball (uniform for L-inf). Default: True.
        early_stop (bool): freeze examples once misclassified and stop computing on them; this can only
            lower robust accuracy (see the module docstring). Default: True.

    Shape:
        - x: ``[B, C, H, W]`` in [0, 1]; y: ``[B]`` long.
        - output: ``[B, C, H, W]`` adversarial examples.

    Example::

        >>> attack = PGD(eps=0.1, steps=50)
        >>> x_adv = attack(model, x, y)
        >>> robust_acc = (model(x_adv).argmax(1) == y).float().mean()
    """

    name = "pgd"

    def __init__(
        self,
        eps: float,
        norm: str = "Linf",
        *,
        seed: int = 0,
        steps: int = 50,
        step_size: float | None = None,
        step_fraction: float | None = None,
        random_start: bool = True,
        early_stop: bool = True,
        **hyper: object,
    ) -> None:
        super().__init__(eps, norm, seed=seed, **hyper)
        self.steps = positive_int("steps", steps)
        if step_size is not None and step_fraction is not None:
            raise ConfigError("give step_size or step_fraction, not both")
        self.step_fraction = None if step_fraction is None else positive_float("step_fraction", step_fraction)
        if self.step_fraction is not None:
            self.step_size = self.step_fraction * self.eps
        else:
            self.step_size = positive_float("step_size", step_size) if step_size is not None else 2.5 * self.eps / self.steps
        self.random_start = bool(random_start)
        self.early_stop = bool(early_stop)

    def start(self, x: Tensor) -> Tensor:
        """The first iterate: a random point of the ball, or ``x`` itself."""
        return self.random_init(x) if self.random_start else x.clone()

    def loss(self, model: nn.Module, x_adv: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The loss to maximise and the success flags (see :data:`LossFn`); subclasses override."""
        return ce_loss(model, x_adv, y, idx)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return pgd_loop(
            model, x, y, self.start(x), loss_fn=self.loss, steps=self.steps, step_size=self.step_size,
            eps=self.eps, norm=self.norm, early_stop=self.early_stop,
        )

