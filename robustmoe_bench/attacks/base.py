"""The :class:`Attack` base class: one place that handles everything an attack must get right
besides its algorithm.

``Attack.__call__`` is final in spirit: it validates the inputs, puts the model in eval mode and turns
off parameter gradients for the duration of the call (restoring both from the state read *at call time*,
not at construction), seeds a private ``torch.Generator`` so random starts are reproducible, runs the
subclass's :meth:`Attack.perturb`, and finally projects onto the eps-ball and [0, 1] as a safety net.
It returns ONE tensor, the adversarial examples. Subclasses implement only :meth:`Attack.perturb`.

Hyper-parameters are the keyword arguments of the subclass's ``__init__``; unknown ones raise
:class:`~robustmoe_bench.errors.ConfigError`, and :meth:`Attack.params` reads them back by name, so a
results file always records exactly what ran.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError, ModelError

NORMS = ("Linf", "L2")


class Attack:
    """Base class of every attack: ``attack(model, x, y) -> x_adv``.

    Arguments:
        eps (float): radius of the threat model's ball (inputs are images in [0, 1]).
        norm (str): ``"Linf"`` or ``"L2"``. Default: ``"Linf"``.
        seed (int): seed of the private generator used for random starts. Default: 0.

    Shape:
        - model: ``[B, C, H, W]`` in [0, 1] -> logits ``[B, classes]``.
        - x: ``[B, C, H, W]`` float in [0, 1].  y: ``[B]`` long class indices.
        - output: ``[B, C, H, W]`` adversarial examples in the eps-ball around ``x`` and in [0, 1].

    Example::

        >>> attack = create_attack("pgd", eps=0.1, steps=50)
        >>> x_adv = attack(model, x, y)
    """

    name: ClassVar[str] = "attack"
    #: True when the attack needs a Mixture-of-Experts model (routing trace / forced or soft routing);
    #: suites can read it to skip such attacks on Dense models instead of catching ModelError.
    requires_moe: ClassVar[bool] = False
    #: True when the attack forces expert pathways (pathway-forced, soft routing): suites skip it, with
    #: the reason, for models whose routing adapter cannot force.
    requires_forcing: ClassVar[bool] = False

    def __init__(self, eps: float, norm: str = "Linf", *, seed: int = 0, **hyper: Any) -> None:
        if hyper:
            known = ", ".join(self._hyper_names()) or "(none)"
            raise ConfigError(
                f"unknown hyper-parameter(s) for attack {self.name!r}: {', '.join(sorted(hyper))}; known: {known}"
            )
        try:
            eps = float(eps)
        except (TypeError, ValueError):
            raise ConfigError(f"eps must be a number, got {eps!r}") from None
        if not math.isfinite(eps) or eps <= 0:
            raise ConfigError(f"eps must be a positive finite number, got {eps}")
        if norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if norm == "Linf" and eps >= 1:
            raise ConfigError(f"Linf eps={eps} is not below 1: inputs are in [0, 1] (pixel units? use 8/255)")
        self.eps = eps
        self.norm = norm
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------ hyper-parameters
    @classmethod
    def _hyper_names(cls) -> list[str]:
        """Keyword-only hyper-parameters of the subclass's ``__init__`` (besides eps, norm, seed)."""
        names: list[str] = []
        for klass in cls.__mro__:
            if klass is Attack or "__init__" not in vars(klass):
                continue
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind is p.KEYWORD_ONLY and p.name != "seed" and p.name not in names:
                    names.append(p.name)
        return names

    def params(self) -> dict[str, Any]:
        """JSON-able hyper-parameters, e.g. ``{"eps": 0.1, "norm": "Linf", "seed": 0, "steps": 50, ...}``."""
        out: dict[str, Any] = {"eps": self.eps, "norm": self.norm, "seed": self.seed}
        for n in self._hyper_names():
            v = getattr(self, n)
            out[n] = list(v) if isinstance(v, tuple) else v
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"

    # ------------------------------------------------------------------ the final call
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Attack ``model`` at ``(x, y)``; returns ``x_adv`` ``[B, C, H, W]`` in the eps-ball and [0, 1]."""
        self._check_inputs(model, x, y)
        x = x.detach()
        y = y.detach()
        was_training = model.training  # read now: the caller may have switched modes since construction
        grad_flags = [(p, p.requires_grad) for p in model.parameters()]
        self._generator = torch.Generator(device=x.device)
        self._generator.manual_seed(self.seed)
        try:
            model.eval()
            for p, _ in grad_flags:
                p.requires_grad_(False)
            with torch.enable_grad():  # attacks differentiate inputs even when called under no_grad
                x_adv = self.perturb(model, x, y)
        finally:
            for p, flag in grad_flags:
                p.requires_grad_(flag)
            model.train(was_training)
            self._generator = None
        if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
            raise RuntimeError(f"{type(self).__name__}.perturb must return a tensor of shape {tuple(x.shape)}")
        return project(x_adv.detach(), x, self.eps, self.norm)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The algorithm: return adversarial examples for ``(x, y)`` (shape of ``x``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for subclasses
    @property
    def generator(self) -> torch.Generator:
        """The generator seeded from ``seed`` for the current call (only valid inside ``perturb``)."""
        if self._generator is None:
            raise RuntimeError("the attack generator exists only while the attack runs")
        return self._generator

    def random_init(self, x: Tensor) -> Tensor:
        """A uniformly random point of the Linf ball, or a random point of the L2 ball (uniform direction,
        radius uniform in [0, eps]), clamped to [0, 1]. ``x``: ``[B, ...]`` -> same shape."""
        g = self.generator
        if self.norm == "Linf":
            u = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)
            delta = (2 * u - 1) * self.eps
        else:
            d = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
            n = d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            r = torch.rand(n.shape, generator=g, device=x.device, dtype=x.dtype)
            delta = d / n * r * self.eps
        return (x + delta).clamp(0, 1)

    def _check_inputs(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise DataError(f"x must be a [B, C, H, W] tensor, got {getattr(x, 'shape', type(x).__name__)}")
        if not x.is_floating_point():
            raise DataError(f"x must be a float tensor of images in [0, 1], got dtype {x.dtype}")
        if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise DataError(f"y must be a [B] tensor with B={x.shape[0]}, got {getattr(y, 'shape', type(y).__name__)}")
        if y.dtype != torch.long:
            raise DataError(f"y must hold long class indices, got dtype {y.dtype}")
        if x.device != y.device:
            raise DataError(f"x is on {x.device} but y is on {y.device}")
        if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
            raise DataError(f"x must be images in [0, 1], got values in [{float(x.min()):.4g}, {float(x.max()):.4g}]")
        p = next(model.parameters(), None)
        if p is not None and p.device != x.device:
            raise ModelError(f"the model is on {p.device} but the inputs are on {x.device}")


def positive_int(name: str, value: object) -> int:
    """``value`` as an int >= 1, else :class:`ConfigError` naming the hyper-parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_float(name: str, value: object) -> float:
    """``value`` as a finite float > 0, else :class:`ConfigError` naming the hyper-parameter."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return v


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str, tol: float = 1e-6) -> Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x``, then clamp to [0, 1].

    Clamping after the projection cannot leave the ball: ``x`` lies in [0, 1], so clamping moves every
    coordinate of ``x_adv`` towards ``x``'s. Examples already inside (up to ``tol``, float rounding of
    the attack's own projection) are returned bit-for-bit unchanged: recomputing ``x + (x_adv - x)``
    can move a point by one ulp, which could flip an example that sits exactly on a decision boundary.
    Shapes: ``[B, ...]`` -> ``[B, ...]``.
    """
    delta = x_adv - x
    flat = delta.flatten(1)
    if norm == "Linf":
        size = flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
        projected = delta.clamp(-eps, eps)
    elif norm == "L2":
        size = flat.norm(dim=1)
        scale = torch.clamp(eps / size.clamp_min(1e-12), max=1.0)
        projected = delta * scale.view(-1, *([1] * (x.dim() - 1)))
    else:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    in_range = ((x_adv >= 0) & (x_adv <= 1)).flatten(1).all(dim=1)
    ok = (size <= eps + tol) & in_range
    fixed = (x + projected).clamp(0, 1)
    return torch.where(ok.view(-1, *([1] * (x.dim() - 1))), x_adv, fixed)


def check_in_ball(x_adv: Tensor, x: Tensor, eps: float, norm: str, what: str) -> None:
    """Refuse an attack output outside the threat model (a bug in the attack would inflate its
    success); a tolerance of 1e-5 absorbs float rounding."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"{what} returned shape {tuple(x_adv.shape)} for input {tuple(x.shape)}")
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    if x_adv.numel() and (bool((size > eps * (1 + 1e-5) + 1e-5).any()) or x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6):
        raise RuntimeError(f"{what} returned inputs outside the {norm} ball of radius {eps} or outside [0, 1]")
