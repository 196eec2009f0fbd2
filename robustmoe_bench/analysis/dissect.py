"""Four-category dissection of an MoE model's robustness (SPEC §6, the paper's Figs. 4-5).

Attack the model once; for every test example decide

* **routers fooled**: some MoE layer chose a different expert on ``x_adv`` than on ``x`` (top-k: a
  different expert SET), read from the model's routing adapter (ours, ``--router-modules`` or ``--adapter``);
* **prediction fooled**: the model is not robust on the example, i.e. its prediction on ``x_adv``
  is wrong **or** the clean example ``x`` is already misclassified.

and count ① neither, ② routers only, ③ prediction only, ④ both (the four always sum to ``n``).
①+③ is the routers' robustness, ①+② the model's robustness.

Why clean mistakes count as "prediction fooled": with that rule ①+② is exactly the robust accuracy
the evaluation suites report (an example is robust only if it is right clean *and* under attack), so
the dissection and the leaderboard number agree. The clean accuracy and the accuracy on ``x_adv``
alone are reported next to the categories so a reader can tell how much of ③/④ is clean error.

``routers=True`` adds the same dissection with ``x_adv`` from the router-untargeted attack (aimed at the
routers only) and "robust accuracy of routers alone" (share of examples whose routing is unchanged under
that attack, = its ①+③).

Cost: each attack kind runs exactly once per example (streamed over batches); the four categories, the
per-layer change rates and both accuracies all come from that one pass plus one clean and one
adversarial forward with the routing trace on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor

from ..attacks.base import check_in_ball
from .plots import new_axes, save_figure
from .record import JsonRecord
from .routes import AttackFn, Utilisation, analysis_eps, check_examples, predict_and_route, require_moe, resolve_attack  # noqa: F401  (re-exported)

SCHEMA_VERSION = 1

CATEGORIES = ("neither", "routers_only", "prediction_only", "both")
CATEGORY_LABELS = {
    "neither": "① neither fooled",
    "routers_only": "② routers fooled only",
    "prediction_only": "③ prediction fooled only",
    "both": "④ both fooled",
}

# --------------------------------------------------------------------------- shared helpers (see .routes)
def _pct(k: int, n: int) -> float:
    return 100.0 * k / n if n else 0.0


# --------------------------------------------------------------------------- results
@dataclass
class AttackDissection:
    """The four categories under one attack. Percentages are 0-100 over ``n`` examples.

    ``counts``/``percent``: keyed by :data:`CATEGORIES`. ``router_robustness`` = ①+③,
    ``model_robustness`` = ①+② (= robust accuracy: right clean and on ``x_adv``),
    ``adv_acc`` = accuracy on ``x_adv`` alone, ``routing_change_rate`` = ②+④,
    ``layer_change_rates``: MoE layer name -> % of examples whose expert changed in that layer.
    """

    attack: str
    params: dict[str, Any]
    n: int
    counts: dict[str, int]
    percent: dict[str, float]
    router_robustness: float
    model_robustness: float
    adv_acc: float
    routing_change_rate: float
    layer_change_rates: dict[str, float]
    seconds: float

    @classmethod
    def from_flags(
        cls, attack: str, params: dict[str, Any], routers: Tensor, prediction: Tensor, layer_changed: Tensor,
        adv_correct: Tensor, layer_names: list[str], seconds: float,
    ) -> "AttackDissection":
        """Build from per-example flags: ``routers``/``prediction``/``adv_correct`` ``[n]`` bool,
        ``layer_changed`` ``[L, n]`` bool."""
        n = int(routers.numel())
        counts = {
            "neither": int((~routers & ~prediction).sum()),
            "routers_only": int((routers & ~prediction).sum()),
            "prediction_only": int((~routers & prediction).sum()),
            "both": int((routers & prediction).sum()),
        }
        per_layer = layer_changed.sum(dim=1).tolist() if layer_changed.numel() else [0] * len(layer_names)
        return cls(
            attack=attack, params=params, n=n, counts=counts,
            percent={k: _pct(v, n) for k, v in counts.items()},
            router_robustness=_pct(counts["neither"] + counts["prediction_only"], n),
            model_robustness=_pct(counts["neither"] + counts["routers_only"], n),
            adv_acc=_pct(int(adv_correct.sum()), n),
            routing_change_rate=_pct(counts["routers_only"] + counts["both"], n),
            layer_change_rates={name: _pct(int(k), n) for name, k in zip(layer_names, per_layer)},
            seconds=seconds,
        )


@dataclass
class DissectResult(JsonRecord):
    """Dissection of one MoE model (see module docstring). ``attack``: the model attack (PGD-50 by
    default); ``router_attack``: the router-untargeted attack (only with ``routers=True``);
    ``routers_alone_robust_acc``: % of examples whose routing survives the router attack."""

    KIND: ClassVar[str] = "dissection"
    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION

    n_examples: int
    clean_acc: float
    eps: float
    eps_str: str
    norm: str
    seed: int
    layers: list[str]
    attack: AttackDissection
    router_attack: Optional[AttackDissection] = None
    routers_alone_robust_acc: Optional[float] = None
    model: dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None
    dataset: Optional[str] = None
    seconds: float = 0.0
    schema_version: int = SCHEMA_VERSION
    #: expert utilisation and collapse metrics of the clean routing and of the routing under the model
    #: attack: ``{"clean" | "adversarial": {share, entropy_bits, mean_entropy_bits, busiest_share,
    #: entropy_normalised}}`` (see :class:`~robustmoe_bench.analysis.iou.Utilisation`)
    utilisation: Optional[dict[str, dict[str, Any]]] = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DissectResult":
        d = cls.checked_fields(d)
        d["attack"] = AttackDissection(**d["attack"])
        if d.get("router_attack") is not None:
            d["router_attack"] = AttackDissection(**d["router_attack"])
        return cls(**d)

    def dissections(self) -> list[AttackDissection]:
        return [d for d in (self.attack, self.router_attack) if d is not None]


# --------------------------------------------------------------------------- the analysis
def dissect(
    model: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    attack: str | AttackFn = "pgd50",
    routers: bool = False,
    eps: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    *,
    norm: str = "Linf",
    router_attack: str | AttackFn = "router-untargeted",
    router_steps: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DissectResult:
    """Dissect ``model``'s robustness on ``x`` ``[n, C, H, W]`` in [0, 1] with labels ``y`` ``[n]``.

    ``eps`` defaults to the data set's usual radius; ``router_steps`` overrides the router attack's
    step count (its default is 50). Each attack runs once per example, streamed in
    batches of ``batch_size``; ``progress(done, n)`` is called after each batch. Raises
    :class:`ModelError` for a model without routers.
    """
    require_moe(model, "dissection")
    check_examples(x, y, batch_size)
    from ..adapters.external import model_dataset, model_record

    dataset = model_dataset(model)
    eps = analysis_eps(model, eps)
    from ..config import format_eps

    kinds: list[tuple[str, dict[str, Any], AttackFn]] = [resolve_attack(attack, eps, seed=seed, norm=norm)]
    if routers:
        extra = {} if router_steps is None or callable(router_attack) else {"steps": int(router_steps)}
        kinds.append(resolve_attack(router_attack, eps, seed=seed, norm=norm, **extra))

    was_training = model.training
    model.eval()  # routing decisions and BN statistics must be those of inference
    device = next(model.parameters()).device
    t_start = time.perf_counter()
    n = x.shape[0]
    clean_ok: list[Tensor] = []
    flags: list[dict[str, list[Tensor]]] = [{"layer": [], "adv_ok": []} for _ in kinds]
    sets_clean: list[Tensor] = []
    sets_adv: list[Tensor] = []
    seconds = [0.0 for _ in kinds]
    names: list[str] = []
    try:
        for start in range(0, n, batch_size):
            xb = x[start:start + batch_size].to(device)
            yb = y[start:start + batch_size].to(device)
            pred, experts, names = predict_and_route(model, xb)
            clean_ok.append((pred == yb).cpu())
            sets_clean.append(experts.cpu())
            for k, (name, _, atk) in enumerate(kinds):
                t0 = time.perf_counter()
                x_adv = atk(model, xb, yb).detach()
                seconds[k] += time.perf_counter() - t0
                check_in_ball(x_adv, xb, eps, norm, name)
                pred_a, experts_a, _ = predict_and_route(model, x_adv)
                # a layer's routing changed iff its chosen expert SET changed (top-k: any member)
                flags[k]["layer"].append((experts_a != experts).any(dim=-1).cpu())
                if k == 0:
                    sets_adv.append(experts_a.cpu())
                flags[k]["adv_ok"].append((pred_a == yb).cpu())
            if progress is not None:
                progress(min(start + batch_size, n), n)
    finally:
        model.train(was_training)

    clean = torch.cat(clean_ok)
    results = []
    for k, (name, params, _) in enumerate(kinds):
        layer_changed = torch.cat(flags[k]["layer"], dim=1)  # [L, n]
        adv_ok = torch.cat(flags[k]["adv_ok"])
        results.append(AttackDissection.from_flags(
            name, params, routers=layer_changed.any(dim=0), prediction=~(clean & adv_ok),
            layer_changed=layer_changed, adv_correct=adv_ok, layer_names=names, seconds=seconds[k],
        ))
    router_res = results[1] if routers else None
    return DissectResult(
        n_examples=n, clean_acc=_pct(int(clean.sum()), n), eps=eps, eps_str=format_eps(eps), norm=norm,
        seed=seed, layers=names, attack=results[0], router_attack=router_res,
        routers_alone_robust_acc=router_res.router_robustness if router_res else None,
        model=model_record(model), dataset=dataset, seconds=time.perf_counter() - t_start,
        utilisation=_utilisation(model, torch.cat(sets_clean, dim=1), torch.cat(sets_adv, dim=1)),
    )


def _utilisation(model: torch.nn.Module, clean: Tensor, adv: Tensor) -> dict[str, dict[str, Any]]:
    """Utilisation and collapse metrics of clean and adversarial expert sets ``[L, n, k]``."""
    from dataclasses import asdict

    from ..adapters.routing import require_adapter

    n_exp = max(require_adapter(model, "dissection").num_experts())
    return {"clean": asdict(Utilisation.of(clean, n_exp)), "adversarial": asdict(Utilisation.of(adv, n_exp))}


# --------------------------------------------------------------------------- figures
def plot_dissection(result: DissectResult, path: str | Path, title: str | None = None) -> Path:
    """Stacked bars of the four categories per attack (left) and per-layer routing-change rates (right)."""
    dis = result.dissections()
    fig, (ax, ax2) = new_axes(ncols=2, figsize=(11, 4.5))
    colors = {"neither": "#4c9a2a", "routers_only": "#f2b134", "prediction_only": "#5b8ec9", "both": "#c8423b"}
    labels = [d.attack for d in dis]
    bottom = [0.0] * len(dis)
    for cat in CATEGORIES:
        vals = [d.percent[cat] for d in dis]
        bars = ax.bar(labels, vals, bottom=bottom, color=colors[cat], label=CATEGORY_LABELS[cat], width=0.55)
        for b, v, b0 in zip(bars, vals, bottom):
            if v >= 4:
                ax.text(b.get_x() + b.get_width() / 2, b0 + v / 2, f"{v:.1f}", ha="center", va="center", fontsize=8)
        bottom = [b0 + v for b0, v in zip(bottom, vals)]
    ax.set_ylim(0, 100)
    ax.set_xlabel("attack")
    ax.set_ylabel(f"% of {result.n_examples} test examples")
    ax.set_title(f"Robustness dissection (clean acc {result.clean_acc:.1f}%, ε={result.eps_str})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)

    width = 0.8 / max(1, len(dis))
    pos = list(range(len(result.layers)))
    for k, d in enumerate(dis):
        ax2.bar([p + (k - (len(dis) - 1) / 2) * width for p in pos],
                [d.layer_change_rates[name] for name in result.layers], width=width, label=d.attack)
    ax2.set_xticks(pos)
    ax2.set_xticklabels(result.layers, rotation=30, ha="right", fontsize=8)
    ax2.set_ylim(0, 100)
    ax2.set_xlabel("MoE layer")
    ax2.set_ylabel("% of examples whose expert changed")
    ax2.set_title("Per-layer routing-change rate")
    ax2.legend(title="attack", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)

