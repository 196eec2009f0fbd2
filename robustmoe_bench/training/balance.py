"""Balancing losses of top-k gates, added to a training objective (``--balance``, ``--balance-weight``).

For one MoE layer with router logits ``[B, N]``, probabilities ``p = softmax(logits)`` and chosen expert
sets ``[B, k]``:

* ``switch`` (Switch Transformer style): ``N * sum_i f_i * P_i`` with ``f_i`` the share of the ``B*k``
  assignments that went to expert ``i`` (no gradient) and ``P_i`` the batch mean of ``p_i``. It is 1
  for perfectly balanced routing and grows to ``N`` when one expert takes everything.
* ``entropy``: ``log N - H(mean_b p)``, the entropy deficit of the batch's mean gate distribution: 0
  when the gate spreads the batch evenly over the experts on average, ``log N`` when it always puts all
  its probability on one expert. (It constrains the *mean* distribution only: every input may still
  be routed confidently.)

The loss of a forward is the mean over its MoE layers; the objective adds ``weight *`` the mean over
the forwards of the step that train the model (TRADES: the clean and the adversarial forward).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..models.routing import LayerRecord

BALANCE_LOSSES = ("none", "switch", "entropy")


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


__all__ = ["BALANCE_LOSSES", "layer_balance_loss", "balance_loss", "forwards_balance_loss"]
