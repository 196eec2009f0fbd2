"""GFLOPs (fvcore convention) checked against hand-computed counts on resnet-tiny.

resnet-tiny: stem 3x3 conv (3 -> S) + BN; block0 (stride 1): conv1 3x3, BN, conv2 3x3, BN, identity
shortcut; block1 (stride 2): conv1 3x3, BN, conv2 3x3, BN, 1x1 projection + BN; global average pool;
linear. Counting rules (fvcore): conv Cout*Cin*k*k*Hout*Wout, BN (eval) 2 per output element,
adaptive average pool 1 per input element, linear in*out, ``aten::mean`` 1 per input element.
"""
from __future__ import annotations

import pytest
import torch

from robustmoe_bench.flops import gflops
from robustmoe_bench.errors import ModelError
from robustmoe_bench.models import create_model, force_routing

H = 16  # input side: small so every trace is fast
CLASSES = 10


def conv(cout: int, cin: int, k: int, hw: int) -> int:
    return cout * cin * k * k * hw * hw


def resnet_tiny_pathway(stem: int, w0: int, w1: int, sc_in: int | None = None) -> dict[str, int]:
    """Per-module FLOPs of one input whose active widths are ``stem``, ``w0``, ``w1``.

    ``sc_in``: input width of block1's projection (the active width of block0's output).
    """
    h1, h2 = H, H // 2
    sc_in = w0 if sc_in is None else sc_in
    return {
        "body.stem.conv": conv(stem, 3, 3, h1), "body.stem.bn": 2 * stem * h1 * h1,
        "body.layers.0.conv1": conv(w0, stem, 3, h1), "body.layers.0.bn1": 2 * w0 * h1 * h1,
        "body.layers.0.conv2": conv(w0, w0, 3, h1), "body.layers.0.bn2": 2 * w0 * h1 * h1,
        "body.layers.1.conv1": conv(w1, w0, 3, h2), "body.layers.1.bn1": 2 * w1 * h2 * h2,
        "body.layers.1.conv2": conv(w1, w1, 3, h2), "body.layers.1.bn2": 2 * w1 * h2 * h2,
        "body.layers.1.sc_conv": conv(w1, sc_in, 1, h2), "body.layers.1.sc_bn": 2 * w1 * h2 * h2,
        "body": w1 * h2 * h2,  # global average pool
        "body.fc": w1 * CLASSES,
    }


def layer_router_cost(experts: int, stem: int, w0: int, w1: int, layout: str = "slice") -> int:
    """GAP of each MoE layer's (active) input + linear from the pooled input to N scores.

    Slice layout: the linear reads the full-width (N*w) input; compact layout: the w-channel input.
    """
    full0, full1 = (experts * w0, experts * w1) if layout == "slice" else (w0, w1)
    return (stem * H * H + stem * experts          # layers.0.conv1: input = dense stem output
            + w0 * H * H + full0 * experts          # layers.0.conv2
            + w0 * H * H + full0 * experts          # layers.1.conv1 (input at H before the stride)
            + w1 * (H // 2) ** 2 + full1 * experts)  # layers.1.conv2


def model(kind: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet-tiny", kind=kind, dataset="cifar10", input_shape=(3, H, H), **kw)


def giga(d: dict[str, int]) -> dict[str, float]:
    return {k: v / 1e9 for k, v in d.items()}


def assert_counts(got: dict[str, float], want: dict[str, int]) -> None:
    assert set(got) == set(want)
    for k, v in giga(want).items():
        assert got[k] == pytest.approx(v, rel=1e-12, abs=0), k


def test_dense_exact() -> None:
    g = gflops(model("dense"))
    want = resnet_tiny_pathway(8, 8, 16)
    assert_counts(g.per_module, want)
    assert g.total == pytest.approx(sum(want.values()) / 1e9, rel=1e-12)
    assert g.router == 0.0 and g.pathway == g.total and g.n_inputs == 1


def test_sdense_exact() -> None:
    g = gflops(model("sdense", scale=0.5))
    assert_counts(g.per_module, resnet_tiny_pathway(4, 4, 8))
    assert g.router == 0.0


@pytest.mark.parametrize("layout", ["slice", "compact"])
@pytest.mark.parametrize("experts,scale,w0,w1", [(2, 0.5, 4, 8), (4, 0.25, 2, 4)])
def test_moe_layer_router_exact(experts: int, scale: float, w0: int, w1: int, layout: str) -> None:
    m = model("moe", experts=experts, scale=scale, router="layer", layout=layout)
    x = torch.rand(6, 3, H, H)
    g = gflops(m, x)
    pathway = resnet_tiny_pathway(8, w0, w1)  # stem dense at full width; one expert per MoE layer
    if layout == "compact":
        # block0 maps the 8-channel dense stem to its w0-channel compact output: a 1x1 projection
        pathway["body.layers.0.sc_conv"] = conv(w0, 8, 1, H)
        pathway["body.layers.0.sc_bn"] = 2 * w0 * H * H
    conv_keys = [k for k in pathway if "conv" in k]
    for k in conv_keys:  # only the chosen expert's filters: Cout = expert width
        assert g.per_module[k] == pytest.approx(pathway[k] / 1e9, rel=1e-12), k
    assert g.pathway == pytest.approx(sum(pathway.values()) / 1e9, rel=1e-12)
    assert g.router == pytest.approx(layer_router_cost(experts, 8, w0, w1, layout) / 1e9, rel=1e-12)
    assert g.total == pytest.approx(g.pathway + g.router, rel=1e-12)
    assert sum(g.per_module.values()) == pytest.approx(g.total, rel=1e-12)
    assert g.n_inputs == 6
    # the MoE pathway is about the S-Dense cost (stem stays full width), well below Dense
    dense = gflops(model("dense")).total
    assert g.pathway < 0.6 * dense


def test_shared_router_cost_separate() -> None:
    m = model("moe", router="shared", layout="slice")
    g = gflops(m, torch.rand(3, 3, H, H))
    # shared router: conv 3->16 s2, BN, conv 16->32 s2, BN, GAP, linear 32->2
    h1, h2 = H // 2, H // 4
    want = (conv(16, 3, 3, h1) + 2 * 16 * h1 * h1 + conv(32, 16, 3, h2) + 2 * 32 * h2 * h2
            + 32 * h2 * h2 + 32 * 2)
    assert g.router == pytest.approx(want / 1e9, rel=1e-12)
    assert g.pathway == pytest.approx(sum(resnet_tiny_pathway(8, 4, 8).values()) / 1e9, rel=1e-12)
    assert all(k.startswith("router") for k in g.per_module if "router" in k)


def test_routing_does_not_change_pathway_cost() -> None:
    m = model("moe", experts=4, scale=0.25)
    x = torch.rand(5, 3, H, H)
    costs = []
    for e in range(4):
        with force_routing(m, e):
            costs.append(gflops(m, x).pathway)
    mixed = torch.tensor([0, 1, 2, 3, 1])
    with force_routing(m, mixed):
        costs.append(gflops(m, x).pathway)
    assert max(costs) == pytest.approx(min(costs), rel=1e-12)


def test_hydra_counts_kept_channels_only() -> None:
    m = model("sparse", scale=0.5)
    g = gflops(m, torch.rand(4, 3, H, H))
    d = resnet_tiny_pathway(8, 8, 16)
    want = dict(d)
    # masked convs keep half their filters; block conv2s also see only the kept half of their input
    # (straight from conv1 through BN + ReLU); block1.conv1's input passed a residual add: full.
    want["body.layers.0.conv1"] = d["body.layers.0.conv1"] // 2
    want["body.layers.0.conv2"] = d["body.layers.0.conv2"] // 4
    want["body.layers.1.conv1"] = d["body.layers.1.conv1"] // 2
    want["body.layers.1.conv2"] = d["body.layers.1.conv2"] // 4
    for bn in ("body.layers.0.bn1", "body.layers.0.bn2", "body.layers.1.bn1", "body.layers.1.bn2"):
        want[bn] = d[bn] // 2
    assert_counts(g.per_module, want)
    assert g.router == 0.0


def test_mode_and_state_restored() -> None:
    m = model("moe")
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    gflops(m, torch.rand(2, 3, H, H))
    assert m.training and m.execution == "sparse"
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bad_input_shape() -> None:
    with pytest.raises(ModelError, match="inputs must be"):
        gflops(model("dense"), torch.rand(2, 1, H, H))
