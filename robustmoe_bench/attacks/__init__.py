"""Attacks: one :class:`Attack` base class, a registry by name, and :func:`create_attack`.

Built-ins (registered on import): ``pgd``; the AutoAttack reference algorithms from pyautoattack
(``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``, ``autoattack``); router-targeted attacks
(``router-untargeted``, ``router-targeted``); adaptive MoE attacks (``soft-pgd``, ``pathway-forced``,
``joint``).

Example::

    >>> from robustmoe_bench.attacks import create_attack
    >>> x_adv = create_attack("pgd", eps=0.1, steps=50)(model, x, y)
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from .base import NORMS, Attack, project
from .adaptive import Joint, PathwayForced, SoftPGD
from .autoattack import APGDCE, APGDT, FABT, AutoAttackStandard, PyAutoAttack, Square
from .pgd import PGD, pgd_loop
from .router import RouterTargeted, RouterUntargeted

ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Register an :class:`Attack` subclass under its ``name`` (usable as a class decorator)."""
    ATTACKS.register(cls.name, cls)
    return cls


for _cls in (PGD, APGDCE, APGDT, FABT, Square, AutoAttackStandard, RouterUntargeted, RouterTargeted,
             SoftPGD, PathwayForced, Joint):
    register_attack(_cls)


def create_attack(name: str, eps: float, norm: str = "Linf", **kwargs: Any) -> Attack:
    """Build the attack registered as ``name``; unknown names or hyper-parameters raise ConfigError.

    Example: ``create_attack("pgd", eps=8/255, steps=50)``.
    """
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; known: {', '.join(ATTACKS.names())}")
    return ATTACKS.get(name)(eps, norm, **kwargs)


__all__ = [
    "ATTACKS", "NORMS", "Attack", "PGD", "PyAutoAttack", "APGDCE", "APGDT", "FABT", "Square", "AutoAttackStandard",
    "RouterUntargeted", "RouterTargeted", "SoftPGD", "PathwayForced", "Joint", "create_attack", "pgd_loop",
    "project", "register_attack",
]
