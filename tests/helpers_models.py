"""Hand-built models for tests (importable from any test file: ``from helpers_models import ...`` or
``from tests.helpers_models import ...``).

:func:`make_masked_gradient_moe` builds an MoE model whose hard routing masks gradients, the textbook
case where plain PGD overstates robustness and the adaptive MoE attacks must not.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from robustmoe_bench.models import RoutedNet, create_model, routing_trace


@torch.no_grad()
def _zero_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.zero_()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # identity batch norm: running mean 0, var 1, weight 1
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
            m.weight.fill_(1.0)


@torch.no_grad()
def make_masked_gradient_moe(eps: float = 0.1, n: int = 32, seed: int = 0) -> tuple[RoutedNet, Tensor, Tensor]:
    """A ``resnet-tiny`` MoE (2 experts, ``shared`` router, Fashion-MNIST shape, 10 classes) whose
    routing masks the gradient, with ``n`` inputs on which it is "robust" to plain PGD only.

    Construction (every other weight is zero, every batch norm the identity):

    * a brightness feature: the stem's channels 4-7 (expert 1's slice of the identity shortcut) and the
      router's first conv compute the local mean of the image (plus a bias that keeps ReLUs active);
    * router: ``logit_1 - logit_0 = k * (brightness - t)``, with ``t`` placed between the clean
      inputs' brightness and their brightness after adding ``+eps`` everywhere, so clean inputs take
      expert 0 and a perturbation within the budget flips the routing to expert 1;
    * expert 0's pathway is constant (zero weights, zero stem channels on its slice): logits
      ``[5, 0, ..., 0]``, class 0, and an exactly ZERO input gradient (the straight-through gate
      multiplies an all-zero expert output, so it contributes nothing either);
    * expert 1's pathway carries the brightness through the shortcuts to ``logit_1 = 10 * brightness``
      (> 5): it misclassifies every input, and its gradient raises brightness.

    Inputs: grey images 0.4 +- 0.02 noise, all labelled 0. Every input is classified correctly and
    has an adversarial example in the Linf ``eps``-ball (shift every pixel up by ``eps``), but PGD under
    the hard routing sees zero gradient everywhere in expert 0's region, and its random start moves the
    brightness by far less than the routing margin.

    Returns ``(model in eval mode, x [n, 1, 28, 28], y [n])``.
    """
    g = torch.Generator().manual_seed(seed)
    model = create_model("resnet-tiny", kind="moe", experts=2, scale=0.5, router="shared",
                         layout="slice", ste="softmax", dataset="fashion-mnist")
    model.eval()
    _zero_all(model)
    body = model.body
    avg = torch.full((3, 3), 1.0 / 9.0)

    # stem: channels 4..7 = local mean of the normalised image + 3 (ReLU stays in its linear part)
    for c in range(4, 8):
        body.stem.conv.weight[c, 0] = avg
        body.stem.bn.bias[c] = 3.0
    # block 2's 1x1 projection shortcut copies expert 1's 4 input channels onto its 8 output channels
    sc = body.layers[1].sc_conv.weight  # [16, 8, 1, 1]; expert 1: output 8..15, input 4..7
    for o in range(8, 16):
        sc[o, 4 + (o - 8) % 4, 0, 0] = 1.0
    # classifier: the bias favours class 0 (expert 0's constant output); expert 1's features push class 1
    body.fc.bias[0] = 5.0
    body.fc.weight[1, 8:16] = 10.0 / 8.0

    # shared router: brightness -> logits; layer 1 averages, layer 2 passes channel 0 through
    feats = model.router.features
    feats[0].weight[0, 0] = avg
    feats[1].bias[0] = 3.0
    feats[3].weight[0, 0, 1, 1] = 1.0

    x = (0.4 + 0.02 * (2 * torch.rand((n, 1, 28, 28), generator=g) - 1)).clamp(0, 1)
    y = torch.zeros(n, dtype=torch.long)

    def brightness(z: Tensor) -> Tensor:
        return feats((z - model.mean) / model.std)[:, 0]

    lo = float(brightness(x).max())
    hi = float(brightness((x + eps).clamp(0, 1)).min())
    if not hi > lo:
        raise RuntimeError("eps too small for the crafted routing margin")
    t = lo + 0.5 * (hi - lo)
    k = 20.0 / (hi - lo)  # clean margin of ~10 logits: decisive, yet softmax gradients do not underflow
    model.router.fc.weight[1, 0] = k
    model.router.fc.bias[1] = -k * t

    with routing_trace(model) as tr:
        pred = model(x).argmax(1)
    if not bool((pred == y).all()) or int(tr.experts().max()) != 0:
        raise RuntimeError("crafted model: clean inputs must take expert 0 and be classified correctly")
    return model, x, y


@torch.no_grad()
def make_diverse_routing_moe(router: str = "shared", n: int = 32, spread: float = 2.0,
                             seed: int = 0) -> tuple[RoutedNet, Tensor, Tensor]:
    """A randomly initialised 2-expert ``resnet-tiny`` MoE whose routers split the inputs about evenly.

    At random initialisation every input tends to take the same expert (the router scores are
    dominated by constant features). Each router's two scores are recalibrated, layer by layer in
    execution order, so that ``score_1 - score_0 = a * (d - median(d))`` on the returned inputs, with
    ``a`` set so the difference has standard deviation ``spread``: about half the inputs per expert,
    with typical margins of a few logits. Labels are the model's own clean predictions (clean accuracy
    100 %). Returns ``(model in eval mode, x [n, 1, 28, 28], y [n])``.
    """
    torch.manual_seed(seed)
    model = create_model("resnet-tiny", kind="moe", experts=2, router=router, dataset="fashion-mnist").eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, 28, 28), generator=g)
    fcs = [model.router.fc] if model.shares_routing else [m.router.fc for _, m in model.moe_layers()]
    for i, fc in enumerate(fcs):
        with routing_trace(model) as tr:
            model(x)
        logits = tr.logits()[i]
        d = logits[:, 1] - logits[:, 0]
        med = d.median()
        a = spread / float(d.std().clamp_min(1e-8))
        w = (fc.weight[1] - fc.weight[0]).clone()
        b = float(fc.bias[1] - fc.bias[0] - med)
        fc.weight[0], fc.weight[1] = -a / 2 * w, a / 2 * w
        fc.bias[0], fc.bias[1] = -a / 2 * b, a / 2 * b
    y = model(x).argmax(1)
    return model, x, y
