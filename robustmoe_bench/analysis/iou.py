"""Pathway IoU between an MoE model and a Sparse (Hydra) model's static mask, plus expert utilisation
(SPEC §6, the paper's Fig. 6).

An input's *pathway* is the set of channels it activates over all MoE layers: in layer ``l`` (``C_l``
output channels, ``N`` experts) the chosen expert ``e`` owns channels ``[e*C_l/N, (e+1)*C_l/N)``;
layers are concatenated with per-layer offsets. The Sparse model's mask is the set of kept channels
of its convolutions at the same positions. ``IoU = |A ∩ B| / |A ∪ B|`` over those concatenated sets.

The intersection needs no per-channel work: with ``k[l, e]`` the number of kept channels inside
expert ``e``'s slice of layer ``l``, ``|A ∩ B| = Σ_l k[l, e_l]``, ``|A| = Σ_l C_l/N``,
``|B| = Σ_l kept_l``.

Inputs: clean test examples and PGD examples against the MoE model; the same adversarial examples'
routing gives the utilisation statistics on adversarial inputs (no second attack).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor

from ..errors import ModelError
from ..attacks.base import check_in_ball
from .routes import AttackFn, Utilisation, analysis_eps, check_examples, collapse, predict_and_route, require_moe, resolve_attack, utilisation  # noqa: F401
from .plots import new_axes, save_figure
from .record import JsonRecord

SCHEMA_VERSION = 1
HIST_BINS = 20


# --------------------------------------------------------------------------- layout and masks
def masked_convs(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The channel-masked convolutions of a Sparse (Hydra) model, in execution order."""
    from ..models import RoutedConv2d

    return [(n, m) for n, m in model.named_modules() if isinstance(m, RoutedConv2d) and m.channel_mask is not None]


def match_layers(moe: torch.nn.Module, sparse: torch.nn.Module) -> tuple[list[str], Tensor]:
    """Check that ``sparse`` is a Sparse model of ``moe``'s backbone; return the MoE layer names and
    ``kept`` ``[L, N]`` long: the number of mask-kept channels inside each expert's slice.

    Raises :class:`ModelError` naming the first mismatch (kind, architecture, layer count, layer widths).
    """
    require_moe(moe, "pathway IoU")
    if getattr(moe, "spec", None) is None:
        raise ModelError("--mask compares with a Sparse model of the same backbone, which only robustmoe-bench "
                         "models have; for your own MoE leave --mask out (IoU against its majority pathway)")
    mspec, sspec = moe.spec, getattr(sparse, "spec", None)  # type: ignore[attr-defined]
    if sspec is None or sspec.kind != "sparse":
        kind = getattr(sspec, "kind", type(sparse).__name__)
        raise ModelError(f"the mask checkpoint must be a 'sparse' (Hydra) model, got kind {kind!r}")
    if mspec.arch != sspec.arch:
        raise ModelError(f"backbones differ: the MoE model is {mspec.arch!r}, the Sparse model {sspec.arch!r}")
    if tuple(mspec.input_shape) != tuple(sspec.input_shape):
        raise ModelError(f"input shapes differ: MoE {tuple(mspec.input_shape)} vs Sparse {tuple(sspec.input_shape)}")
    mlayers, slayers = moe.moe_layers(), masked_convs(sparse)  # type: ignore[attr-defined]
    if len(mlayers) != len(slayers):
        raise ModelError(f"the MoE model has {len(mlayers)} MoE layers but the Sparse model {len(slayers)} masked layers")
    kept = []
    for (mname, mconv), (sname, sconv) in zip(mlayers, slayers):
        if mname != sname:
            raise ModelError(f"layer order differs: MoE layer {mname!r} vs Sparse layer {sname!r}")
        if mconv.out_channels != sconv.out_channels:
            raise ModelError(
                f"layer {mname}: the MoE layer has {mconv.out_channels} channels in all (N x round(r*C) with "
                f"N={mspec.experts}, r={mspec.scale:g}) but the Sparse layer {sconv.out_channels}; "
                "the pathway IoU needs N*r = 1"
            )
        mask = sconv.channel_mask.mask.detach().cpu()
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ModelError(f"layer {sname}: the Sparse model's mask is not 0/1 (was it saved while pruning?)")
        n = mconv.experts
        kept.append(mask.view(n, -1).sum(dim=1).round().long())
    return [n for n, _ in mlayers], torch.stack(kept)


def pathway_iou(experts: Tensor, kept: Tensor, widths: Tensor, mask_sizes: Tensor) -> Tensor:
    """IoU per input. ``experts`` ``[L, B]`` long, ``kept`` ``[L, N]`` (kept channels per expert slice),
    ``widths`` ``[L]`` (channels per expert), ``mask_sizes`` ``[L]`` (kept channels per layer) -> ``[B]``."""
    inter = kept.gather(1, experts).sum(dim=0).double()  # [B]
    union = float(widths.sum() + mask_sizes.sum()) - inter
    return inter / union


# --------------------------------------------------------------------------- results
def _summary(v: Tensor) -> dict[str, float]:
    v = v.double()
    return {
        "mean": float(v.mean()), "std": float(v.std(unbiased=False)), "min": float(v.min()),
        "q25": float(v.quantile(0.25)), "median": float(v.median()), "q75": float(v.quantile(0.75)),
        "max": float(v.max()),
    }



@dataclass
class IoUResult(JsonRecord):
    """Per-input pathway IoU on clean and adversarial inputs, their summaries and histogram, and
    expert utilisation. ``clean``/``adversarial``: IoU per input ``[n]`` (same order as the inputs)."""

    KIND: ClassVar[str] = "IoU result"
    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION

    n_examples: int
    layers: list[str]
    experts: int
    pathway_channels: int
    mask_channels: int
    clean: list[float]
    adversarial: list[float]
    summary: dict[str, dict[str, float]]
    histogram: dict[str, list[float]]
    utilisation: dict[str, Utilisation]
    routing_change_rate: float
    clean_acc: float
    adv_acc: float
    attack: str
    attack_params: dict[str, Any]
    eps: float
    seed: int
    max_entropy_bits: float
    model: dict[str, Any] = field(default_factory=dict)
    mask_model: dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None
    mask_checkpoint: Optional[str] = None
    seconds: float = 0.0
    schema_version: int = SCHEMA_VERSION
    #: what each pathway is compared with: ``"sparse-mask"`` (channels; a Hydra model's mask) or
    #: ``"majority-pathway"`` (experts; per layer the k experts most chosen on the clean inputs)
    reference: str = "sparse-mask"
    #: per-input IoU of the clean and the adversarial pathway of the same input (majority reference only)
    clean_vs_adversarial: Optional[list[float]] = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IoUResult":
        d = cls.checked_fields(d)
        d["utilisation"] = {k: Utilisation(**v) for k, v in d["utilisation"].items()}
        return cls(**d)


def histogram(clean: Tensor, adv: Tensor, bins: int = HIST_BINS) -> dict[str, list[float]]:
    """Shared bin edges over both distributions (so the two bar sets are comparable) and counts."""
    both = torch.cat([clean, adv]).double()
    lo, hi = float(both.min()), float(both.max())
    pad = max(0.02, 0.05 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    def counts(v: Tensor) -> list[float]:
        return torch.histogram(v.double(), bins=edges).hist.tolist()
    return {"edges": edges.tolist(), "clean": counts(clean), "adversarial": counts(adv)}


# --------------------------------------------------------------------------- the analysis
def iou_analysis(
    moe: torch.nn.Module,
    sparse: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    attack: str | AttackFn = "pgd50",
    eps: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    *,
    norm: str = "Linf",
    progress: Callable[[int, int], None] | None = None,
) -> IoUResult:
    """Pathway IoU of ``moe`` against ``sparse``'s mask on ``x`` ``[n, C, H, W]`` (labels ``y`` ``[n]``)
    clean and under ``attack`` (PGD-50 at the data set's ε by default), and expert utilisation.

    The attack runs once per example; its adversarial routing serves both the IoU and the utilisation.
    """
    names, kept = match_layers(moe, sparse)
    check_examples(x, y, batch_size)
    spec = moe.spec  # type: ignore[attr-defined]
    eps = analysis_eps(moe, eps)
    name, params, atk = resolve_attack(attack, eps, seed=seed, norm=norm)
    widths = torch.tensor([m.out_channels // m.experts for _, m in moe.moe_layers()])  # type: ignore[attr-defined]
    mask_sizes = kept.sum(dim=1)

    was_training = moe.training
    moe.eval()
    device = next(moe.parameters()).device
    t0 = time.perf_counter()
    e_clean, e_adv, ok_clean, ok_adv = [], [], [], []
    try:
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            pred, ex, _ = predict_and_route(moe, xb)
            x_adv = atk(moe, xb, yb).detach()
            check_in_ball(x_adv, xb, eps, norm, name)
            pred_a, ex_a, _ = predict_and_route(moe, x_adv)
            e_clean.append(ex[..., 0].cpu())  # our models route top-1: [L, B]
            e_adv.append(ex_a[..., 0].cpu())
            ok_clean.append((pred == yb).cpu())
            ok_adv.append((pred_a == yb).cpu())
            if progress is not None:
                progress(min(start + batch_size, x.shape[0]), x.shape[0])
    finally:
        moe.train(was_training)

    ec, ea = torch.cat(e_clean, dim=1), torch.cat(e_adv, dim=1)
    iou_c = pathway_iou(ec, kept, widths, mask_sizes)
    iou_a = pathway_iou(ea, kept, widths, mask_sizes)
    n = x.shape[0]
    n_exp = int(spec.experts)
    util = {}
    for key, ex in (("clean", ec), ("adversarial", ea)):
        util[key] = Utilisation.of(ex, n_exp)
    return IoUResult(
        n_examples=n, layers=names, experts=n_exp, pathway_channels=int(widths.sum()),
        mask_channels=int(mask_sizes.sum()), clean=iou_c.tolist(), adversarial=iou_a.tolist(),
        summary={"clean": _summary(iou_c), "adversarial": _summary(iou_a)},
        histogram=histogram(iou_c, iou_a), utilisation=util,
        routing_change_rate=100.0 * float((ec != ea).any(dim=0).double().mean()),
        clean_acc=100.0 * float(torch.cat(ok_clean).double().mean()),
        adv_acc=100.0 * float(torch.cat(ok_adv).double().mean()),
        attack=name, attack_params=params, eps=eps, seed=seed, max_entropy_bits=math.log2(n_exp),
        model=spec.to_dict(), mask_model=sparse.spec.to_dict(),  # type: ignore[attr-defined]
        seconds=time.perf_counter() - t0,
    )


def majority_iou_analysis(
    model: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    attack: str | AttackFn = "pgd50",
    eps: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    *,
    norm: str = "Linf",
    progress: Callable[[int, int], None] | None = None,
) -> IoUResult:
    """Pathway IoU for any model with a routing adapter (top-1 or top-k), where no Sparse model of the
    same backbone exists: an input's pathway is the set of (layer, expert) pairs it uses; the reference
    is the *majority pathway* (per layer the k experts chosen most often on the clean inputs, i.e. the
    best static expert mask). ``clean``/``adversarial``: IoU with the reference per input;
    ``clean_vs_adversarial``: IoU of each input's clean and adversarial pathway. Units are experts
    (every expert counts the same). Plus expert utilisation, as in :func:`iou_analysis`."""
    from ..adapters.external import model_record
    from ..adapters.routing import pathway_iou as set_iou, require_adapter

    adapter = require_adapter(model, "pathway IoU")
    check_examples(x, y, batch_size)
    eps = analysis_eps(model, eps)
    name, params, atk = resolve_attack(attack, eps, seed=seed, norm=norm)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    e_clean, e_adv, ok_clean, ok_adv = [], [], [], []
    names: list[str] = []
    try:
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            pred, ex, names = predict_and_route(model, xb)
            x_adv = atk(model, xb, yb).detach()
            check_in_ball(x_adv, xb, eps, norm, name)
            pred_a, ex_a, _ = predict_and_route(model, x_adv)
            e_clean.append(ex.cpu())
            e_adv.append(ex_a.cpu())
            ok_clean.append((pred == yb).cpu())
            ok_adv.append((pred_a == yb).cpu())
            if progress is not None:
                progress(min(start + batch_size, x.shape[0]), x.shape[0])
    finally:
        model.train(was_training)
    ec, ea = torch.cat(e_clean, dim=1), torch.cat(e_adv, dim=1)  # [L, n, k]
    n, k = ec.shape[1], ec.shape[2]
    n_exp = max(adapter.num_experts())
    ref = torch.stack([torch.bincount(layer.reshape(-1), minlength=n_exp).topk(k).indices.sort().values
                       for layer in ec])  # [L, k]: the k most chosen experts per layer (ties: lowest index)
    ref = ref.unsqueeze(1).expand(-1, n, -1)
    iou_c, iou_a = set_iou(ec, ref), set_iou(ea, ref)
    util = {}
    for key, ex in (("clean", ec), ("adversarial", ea)):
        util[key] = Utilisation.of(ex, n_exp)
    size = int(ec.shape[0] * k)
    return IoUResult(
        n_examples=n, layers=names, experts=n_exp, pathway_channels=size, mask_channels=size,
        clean=iou_c.tolist(), adversarial=iou_a.tolist(),
        summary={"clean": _summary(iou_c), "adversarial": _summary(iou_a)},
        histogram=histogram(iou_c, iou_a), utilisation=util,
        routing_change_rate=100.0 * float((ec != ea).any(dim=-1).any(dim=0).double().mean()),
        clean_acc=100.0 * float(torch.cat(ok_clean).double().mean()),
        adv_acc=100.0 * float(torch.cat(ok_adv).double().mean()),
        attack=name, attack_params=params, eps=eps, seed=seed, max_entropy_bits=math.log2(n_exp),
        model=model_record(model), mask_model={}, seconds=time.perf_counter() - t0,
        reference="majority-pathway", clean_vs_adversarial=set_iou(ec, ea).tolist(),
    )


# --------------------------------------------------------------------------- figures
def plot_iou(result: IoUResult, path: str | Path) -> Path:
    """Histogram of the per-input IoU on clean and adversarial inputs (paper Fig. 6 style)."""
    h = result.histogram
    edges = h["edges"]
    fig, ax = new_axes(figsize=(7, 4.5))
    for key, color, label in (("clean", "#3b75af", "clean inputs"), ("adversarial", "#c8423b", f"adversarial ({result.attack})")):
        mean = result.summary[key]["mean"]
        ax.stairs(h[key], edges, fill=True, alpha=0.45, color=color, label=f"{label}: mean IoU {mean:.3f}")
        ax.axvline(mean, color=color, linestyle="--", linewidth=1)
    ax.set_xlabel("IoU between the input's MoE pathway and the Sparse model's channel mask"
                  if result.reference == "sparse-mask" else
                  "IoU between the input's pathway (layer, expert pairs) and the majority pathway")
    ax.set_ylabel(f"number of inputs (of {result.n_examples})")
    ref = "Sparse mask" if result.reference == "sparse-mask" else "majority pathway"
    ax.set_title(f"Pathway IoU: {result.model.get('arch', '')} MoE (N={result.experts}) vs {ref}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_utilisation(result: IoUResult, path: str | Path) -> Path:
    """Share of inputs per expert per MoE layer, clean (solid) and adversarial (hatched)."""
    fig, ax = new_axes(figsize=(max(7, 1.2 * len(result.layers) + 3), 4.5))
    L, N = len(result.layers), result.experts
    width = 0.8 / (2 * N)
    cmap = [f"C{e % 10}" for e in range(N)]
    for j, (key, hatch) in enumerate((("clean", None), ("adversarial", "//"))):
        share = result.utilisation[key].share
        for e in range(N):
            xs = [l + (j * N + e - N + 0.5) * width for l in range(L)]
            ax.bar(xs, [100 * share[l][e] for l in range(L)], width=width, color=cmap[e], hatch=hatch,
                   edgecolor="black", linewidth=0.3, label=f"expert {e} ({key})")
    ax.set_xticks(range(L))
    ax.set_xticklabels(result.layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("% of inputs routed to the expert")
    ent_c = result.utilisation["clean"].mean_entropy_bits
    ent_a = result.utilisation["adversarial"].mean_entropy_bits
    title = (f"Expert utilisation (mean routing entropy {ent_c:.2f} clean / {ent_a:.2f} adversarial, "
             f"max {result.max_entropy_bits:.2f} bits)")
    busiest = result.utilisation["clean"].busiest_share
    if busiest:  # expert collapse: the busiest expert's share per layer, marked on the clean bars
        title += f"\nbusiest expert (clean): max {100 * max(busiest):.0f}% of inputs (black ticks)"
        ax.scatter(range(L), [100 * b for b in busiest], marker="_", s=400, color="black", zorder=5)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)
