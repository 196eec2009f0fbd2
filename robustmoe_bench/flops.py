"""GFLOPs per input, fvcore convention (one multiply-add = one FLOP), with MoE pathway / router split.

What is counted (``gflops``):

* fvcore's ``FlopCountAnalysis`` default operator handles (convolutions, linear/matmul, batch norm:
  2 per element in eval mode, adaptive average pooling: 1 per input element), plus ``aten::mean``
  counted like adaptive average pooling (1 per input element) so a ``layer`` router's global pooling
  is not free. Element-wise ops (ReLU, add, the gate multiply) are ignored, as fvcore does.
* The model runs in SPARSE execution, eval mode, one input at a time. A traced batch-1 forward of an
  MoE model contains only the chosen expert's convolutions, so unchosen experts are never counted
  (top-k models: the k chosen experts of each layer, each counted once; their weighted sum is
  element-wise).
  Cost depends only on the pathway (expert chosen per MoE layer), so inputs are grouped by their
  routing pathway and one representative per distinct pathway is analysed, with its routing forced
  to that pathway (so the count is exactly the routing of the batched forward); the result is the
  average over inputs, weighted by pathway frequency.
* ``router``: operators inside modules named ``router`` (the shared router ``router`` or a layer
  gate ``...convX.router``); ``pathway``: everything else. Non-MoE kinds have router cost 0.
* ``sparse`` (Hydra) kind: fvcore sees full-width convolutions, but a compacted deployment computes
  only the kept channels. With ``P`` the most recently executed channel-masked conv (keeping
  ``keep`` of ``C`` output channels):
    - ``P`` itself counts ``fvcore_flops * keep / C`` (only kept output filters);
    - a later conv, batch norm or linear layer whose ``C``-channel input carries every channel that
      ``P`` pruned as a spatially constant map (true exactly when only channel-wise ops such as BN,
      ReLU or pooling lie between them; a residual add or concatenation mixes in varying data)
      counts only the kept input channels: conv ``fvcore_flops * kept_out/out * keep/C`` (its
      ``kept_out/out`` is 1 unless it is masked itself), BN and linear ``fvcore_flops * keep/C``.
      Such constant channels fold into a bias in a compacted network (convolution borders aside).
    Constancy is checked on the actual inputs (up to 16 of them), over batch and spatial positions.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

with warnings.catch_warnings():  # fvcore's import runs torch.jit.script, deprecated in torch 2.x
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import elementwise_flop_counter

from .errors import ModelError
from .models import RoutedBatchNorm2d, RoutedConv2d, RoutedLinear, RoutedNet, force_routing, routing_trace
from .models.trace import execution

GIGA = 1e9
# Hydra constancy probe: enough inputs that a kept channel is never constant by chance, few enough
# that the probe costs little next to the fvcore trace.
_PROBE_INPUTS = 16


@dataclass(frozen=True)
class GFlops:
    """Average cost per input in GFLOPs (fvcore convention).

    ``pathway``: backbone + chosen experts; ``router``: routers only; ``total = pathway + router``;
    ``per_module``: GFLOPs of the operators each module runs itself (not its children), keyed by
    qualified module name ("" = top level); its values sum to ``total``. ``n_inputs``: inputs averaged.
    """

    pathway: float
    router: float
    total: float
    per_module: dict[str, float] = field(default_factory=dict)
    n_inputs: int = 1

    def to_dict(self) -> dict:
        return {"pathway": self.pathway, "router": self.router, "total": self.total,
                "per_module": dict(self.per_module), "n_inputs": self.n_inputs}


def is_router_module(name: str) -> bool:
    """True for the shared router (``router``) and layer gates (``...conv1.router``) and their children."""
    return "router" in name.split(".")


def _own_counts(by_module: Counter) -> dict[str, float]:
    """Module name -> FLOPs of the operators it runs itself (its total minus its children's)."""
    own: dict[str, float] = {name: float(v) for name, v in by_module.items()}
    for name, v in by_module.items():
        if name:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            if parent in own:
                own[parent] -= float(v)
    return {k: v for k, v in own.items() if v}


def _fvcore_own_counts(model: nn.Module, x: Tensor) -> dict[str, float]:
    """fvcore per-module own FLOPs of one traced forward on ``x`` ``[1, C, H, W]``."""
    with warnings.catch_warnings():
        # tracing warns about data-dependent Python control flow (expert grouping), deprecation of
        # torch.jit, and fvcore about uncounted ops; none changes the counted ops.
        warnings.simplefilter("ignore")
        analysis = (FlopCountAnalysis(model, (x,))
                    .set_op_handle("aten::mean", elementwise_flop_counter(1, 0))
                    .unsupported_ops_warnings(False)
                    .uncalled_modules_warnings(False)
                    .tracer_warnings("none"))
        return _own_counts(analysis.by_module())


def _hydra_scales(model: RoutedNet, x: Tensor) -> dict[str, float]:
    """Module name -> factor applied to its fvcore count in a compacted Hydra model (see module doc).

    ``x``: ``[B, C, H, W]`` probe inputs.
    """
    names = {m: n for n, m in model.named_modules()}
    seen: list[tuple[str, nn.Module, Tensor]] = []

    def pre_hook(module: nn.Module, args: tuple) -> None:
        r = args[0]
        seen.append((names[module], module, r.x.detach() if hasattr(r, "x") else r.detach()))

    kinds = (RoutedConv2d, RoutedBatchNorm2d, RoutedLinear)
    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules() if isinstance(m, kinds)]
    fold, model.fold_bn = model.fold_bn, False  # every BN must run as its own module to be seen
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.fold_bn = fold
        for h in handles:
            h.remove()

    scales: dict[str, float] = {}
    last: RoutedConv2d | None = None  # most recently executed channel-masked conv
    for name, module, inp in seen:
        factor = 1.0
        if last is not None and inp.dim() >= 2 and inp.shape[1] == last.out_channels:
            mask = last.channel_mask.mask.bool()  # type: ignore[union-attr]
            pruned = inp[:, ~mask]
            flat = pruned.transpose(0, 1).reshape(pruned.shape[1], -1)
            if flat.shape[1] and bool((flat == flat[:, :1]).all()):
                factor = int(mask.sum()) / last.out_channels
        if isinstance(module, RoutedConv2d) and module.channel_mask is not None:
            factor *= module.channel_mask.keep / module.out_channels
            last = module
        scales[name] = factor
    return scales


def _split(own: dict[str, float]) -> tuple[float, float]:
    router = sum(v for k, v in own.items() if is_router_module(k))
    return sum(own.values()) - router, router


def gflops(model: nn.Module, x: Tensor | None = None) -> GFlops:
    """Average GFLOPs per input of ``model`` on ``x`` ``[B, C, H, W]`` in [0, 1].

    Default ``x``: one random input of ``model.spec.input_shape``. MoE: averaged over the actual
    routing of the inputs, only chosen experts counted. The model's mode and execution are restored.
    """
    if not isinstance(model, RoutedNet):
        return external_gflops(model, x)
    device = next(model.parameters()).device
    if x is None:
        x = torch.rand(1, *model.spec.input_shape, device=device)
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(model.spec.input_shape) or x.shape[0] == 0:
        raise ModelError(f"inputs must be [B>0, {', '.join(map(str, model.spec.input_shape))}], "
                         f"got {list(x.shape)}")
    x = x.to(device)
    was_training = model.training
    model.eval()  # batch norm must use running statistics and must not update them
    try:
        with execution(model, "sparse"):
            if model.spec.is_moe:
                per_module = _moe_counts(model, x)
            else:
                per_module = _fvcore_own_counts(model, x[:1])
                if model.spec.kind == "sparse":
                    scales = _hydra_scales(model, x[:_PROBE_INPUTS])
                    per_module = {k: v * scales.get(k, 1.0) for k, v in per_module.items()}
    finally:
        model.train(was_training)
    per_module = {k: v / GIGA for k, v in per_module.items() if v}
    pathway, router = _split(per_module)
    return GFlops(pathway=pathway, router=router, total=pathway + router, per_module=per_module,
                  n_inputs=int(x.shape[0]))


def _moe_counts(model: RoutedNet, x: Tensor) -> dict[str, float]:
    """Per-module FLOPs averaged over the routing pathways of ``x`` ``[B, C, H, W]``."""
    with torch.no_grad(), routing_trace(model) as trace:
        for chunk in x.split(256):  # bounded memory for a few hundred test inputs
            model(chunk)
    names = [r.name for r in trace.forwards[0]]
    # [L, B, k] expert sets (k = 1 for top-1 routing): a top-k input's pathway is its k experts per layer
    experts = torch.cat([torch.stack([r.expert_set for r in fwd]) for fwd in trace.forwards], dim=1)
    pathways = Counter(tuple(tuple(s) for s in col) for col in experts.transpose(0, 1).tolist())
    total: dict[str, float] = {}
    for pathway, count in pathways.items():
        # Forcing reproduces the batched routing exactly (batch-1 numerics could break a near-tie);
        # with the pathway fixed the count does not depend on the input values, so x[:1] serves all.
        forced = {n: (torch.tensor([list(s)]) if len(s) > 1 else s[0]) for n, s in zip(names, pathway)}
        with force_routing(model, forced):
            own = _fvcore_own_counts(model, x[:1])
        for k, v in own.items():
            total[k] = total.get(k, 0.0) + v * count
    n = experts.shape[1]
    return {k: v / n for k, v in total.items()}


def external_gflops(model: nn.Module, x: Tensor | None = None) -> GFlops:
    """GFLOPs per input of a model robustmoe-bench did not build (an
    :class:`~robustmoe_bench.adapters.ExternalModel`), fvcore convention, on ``x`` ``[B, C, H, W]``.

    fvcore counts the operators the model's own code runs for one input: a dispatching MoE that runs
    only the chosen experts is counted that way; one that computes every expert and masks (full-copy
    experts evaluated densely) is counted with every expert, because that is what it computes. With a
    routing adapter, inputs are grouped by pathway (chosen expert sets) and one input per distinct
    pathway is traced; the average is weighted by pathway frequency. Router cost: the modules the
    adapter names (``router_modules()``; for ``--router-modules``, the matched modules and their children).
    """
    from .adapters.external import ExternalModel
    from .adapters.routing import get_adapter

    if not isinstance(model, ExternalModel):
        raise ModelError(f"FLOP counting needs a robustmoe_bench model or an ExternalModel, got {type(model).__name__}")
    device = next(model.parameters()).device
    if x is None:
        x = torch.rand(1, *model.data_shape, device=device)
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(model.data_shape) or x.shape[0] == 0:
        raise ModelError(f"inputs must be [B>0, {', '.join(map(str, model.data_shape))}], got {list(x.shape)}")
    x = x.to(device)
    adapter = get_adapter(model)
    was_training = model.training
    model.eval()
    try:
        if adapter is None:
            groups = [(0, 1)]
        else:
            with torch.no_grad(), adapter.trace() as tr:
                for chunk in x.split(256):
                    model(chunk)
            experts = torch.cat([torch.stack([r.experts for r in fwd]) for fwd in tr.forwards if fwd], dim=1)
            first: dict[tuple, int] = {}
            counts: Counter = Counter()
            for i, col in enumerate(experts.permute(1, 0, 2).reshape(experts.shape[1], -1).tolist()):
                key = tuple(col)
                first.setdefault(key, i)
                counts[key] += 1
            groups = [(first[k], c) for k, c in counts.items()]
        total: dict[str, float] = {}
        n = 0
        for i, count in groups:
            own = _fvcore_own_counts(model, x[i:i + 1])
            for k, v in own.items():
                total[k] = total.get(k, 0.0) + v * count
            n += count
    finally:
        model.train(was_training)
    per_module = {k: v / n / GIGA for k, v in total.items() if v}
    prefixes = ["net." + r for r in (adapter.router_modules() if adapter is not None else [])]
    router = sum(v for k, v in per_module.items() if any(k == p or k.startswith(p + ".") for p in prefixes))
    tot = sum(per_module.values())
    return GFlops(pathway=tot - router, router=router, total=tot, per_module=per_module, n_inputs=int(x.shape[0]))


__all__ = ["GFlops", "external_gflops", "gflops", "is_router_module"]
