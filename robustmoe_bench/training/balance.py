"""Balancing losses of MoE gates, added to a training objective (``--balance``, ``--balance-weight``).

Both MoE families use them: the full-copy top-k gates (ConvMoE/BlockMoE) and the channel family (the
paper's MoE-CNN), where the term is ours, not the paper's (see ``training.config.CHANNEL_BALANCE_DEFAULTS``).

For one MoE layer with router logits ``[B, N]``, probabilities ``p = softmax(logits)`` and chosen expert
sets ``[B, k]``:

* ``switch`` (Switch Transformer style): ``N * sum_i f_i * P_i`` with ``f_i`` the share of the ``B*k``
  assignments that went to expert ``i`` (no gradient) and ``P_i`` the batch mean of ``p_i``. It is 1
  for perfectly balanced routing and grows to ``N`` when one expert takes everything.
* ``entropy``: ``log N - H(mean_b p)``, the entropy deficit of the batch's mean gate distribution: 0
  when the gate spreads the batch evenly over the experts on average, ``log N`` when it always puts all
  its probability on one expert. (It constrains the *mean* distribution only: every input may still
  be routed confidently.)
* ``cv2`` (Shazeer et al., 2017, "importance" loss): the squared coefficient of variation
  ``Var_i(I_i) / Mean_i(I_i)^2`` of the experts' importances ``I_i = sum_b p_bi``: 0 when balanced,
  ``N - 1`` when one expert holds all the probability.

The loss of a forward is the mean over its MoE layers; the objective adds ``weight *`` the mean over
the forwards of the step that train the model (TRADES: the clean and the adversarial forward).

The router z-loss (Zoph et al., 2022, ST-MoE), ``mean_b logsumexp(logits_b)^2``, is a separate term
(``--router-z``): it keeps the router's logits small. Without it the softmax of a hard-routed router
saturates (measured: logit gaps of 30+ within one epoch at lr 0.1), every gradient through it -- the
straight-through estimator's and every balancing loss's -- vanishes, and the routing freezes on one expert.
A gate term is ``(loss, weight)`` or ``(loss, weight, z_weight)``; :func:`gate_loss` adds it up.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..models.routing import LayerRecord

BALANCE_LOSSES = ("none", "switch", "entropy", "cv2")


def layer_balance_loss(logits: Tensor, experts: Tensor, kind: str) -> Tensor:
    """One layer: ``logits`` ``[B, N]``, ``experts`` ``[B, k]`` long -> scalar loss (see module docstring)."""
    n = logits.shape[1]
    p = torch.softmax(logits.float(), dim=1)
    mean_p = p.mean(dim=0)
    if kind == "switch":
        counts = torch.bincount(experts.reshape(-1), minlength=n).to(p.dtype)
        f = counts / counts.sum()
        return n * (f * mean_p).sum()
    if kind == "entropy":
        h = -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()
        return math.log(n) - h
    if kind == "cv2":
        importance = p.sum(dim=0)
        return importance.var(unbiased=False) / importance.mean().pow(2)
    raise ValueError(f"unknown balancing loss {kind!r}; known: {', '.join(BALANCE_LOSSES)}")


def balance_loss(records: list[LayerRecord], kind: str) -> Tensor:
    """Mean of :func:`layer_balance_loss` over one forward's MoE layers."""
    if not records:
        raise ValueError("no MoE layer was recorded: a balancing loss needs an MoE model")
    losses = [layer_balance_loss(r.logits, r.experts_k if r.experts_k is not None else r.expert[:, None], kind)
              for r in records]
    return torch.stack(losses).mean()


def forwards_balance_loss(forwards: list[list[LayerRecord]], kind: str) -> Tensor:
    """Mean over recorded forwards (each a list of layer records) of :func:`balance_loss`."""
    return torch.stack([balance_loss(f, kind) for f in forwards]).mean()


def router_z_loss(logits: Tensor) -> Tensor:
    """``mean_b logsumexp(logits_b)^2`` for ``logits`` ``[B, N]`` (ST-MoE's router z-loss)."""
    return torch.logsumexp(logits.float(), dim=1).pow(2).mean()


def gate_loss(forwards: list[list[LayerRecord]], term: tuple) -> tuple[Tensor, dict[str, float]]:
    """The gate term ``(loss, weight[, z_weight])`` over recorded forwards: ``weight * balance + z_weight *
    z``, each averaged over the forwards and their MoE layers; also the unweighted parts by name
    (``balance``, ``router_z``) for the logs."""
    kind, weight = str(term[0]), float(term[1])
    z_weight = float(term[2]) if len(term) > 2 else 0.0
    if not forwards or not any(forwards):
        raise ValueError("no MoE layer was recorded: a gate term needs an MoE model")
    total: Tensor = torch.zeros((), device=forwards[0][0].logits.device)
    parts: dict[str, float] = {}
    if kind != "none" and weight:
        b = forwards_balance_loss(forwards, kind)
        total = total + weight * b
        parts["balance"] = float(b.detach())
    if z_weight:
        z = torch.stack([torch.stack([router_z_loss(r.logits) for r in f]).mean() for f in forwards]).mean()
        total = total + z_weight * z
        parts["router_z"] = float(z.detach())
    return total, parts


__all__ = ["BALANCE_LOSSES", "layer_balance_loss", "balance_loss", "forwards_balance_loss", "gate_loss", "router_z_loss"]
