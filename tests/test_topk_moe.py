"""Full-copy experts with top-k gates (ConvMoE, BlockMoE): structure, sparse == all-experts reference
(outputs and gradients), gate semantics (softmax weights, straight-through k = 1, noise, capacity),
forcing expert sets, traces, checkpoints and bad options."""
from __future__ import annotations

import pytest
import torch

from robustmoe_bench.checkpoint import load_checkpoint, save_checkpoint
from robustmoe_bench.errors import ConfigError
from robustmoe_bench.models import create_model, execution, force_routing, routing_trace
from robustmoe_bench.models.topk import TopKBlock, TopKConv, capacity_keep


def _model(moe: str, k: int, experts: int = 3, seed: int = 0, **kw):
    torch.manual_seed(seed)
    m = create_model("resnet-tiny", "moe", moe=moe, experts=experts, k=k, dataset="fashion-mnist", **kw)
    # spread the gates so that every expert is chosen by some inputs of a small batch
    with torch.no_grad():
        for _, layer in m.moe_layers():
            w = layer.router.fc.weight.normal_(0, 3.0)
            w.sub_(w.mean(dim=1, keepdim=True))  # no common direction: the choice depends on the input
            layer.router.fc.bias.normal_(0, 0.3)
    return m


def _spread_model(moe: str, k: int, train: bool, x: torch.Tensor):
    """The first seeded model whose every MoE layer sends some input of ``x`` to each expert."""
    for seed in range(20):
        m = _model(moe, k, seed=seed).train(train)
        with torch.no_grad(), routing_trace(m) as tr:
            m(x)
        if all(len(torch.unique(e)) == m.spec.experts for e in tr.expert_sets()):
            return m
    raise AssertionError("no seed spreads the inputs over every expert")


def _x(n: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g) * torch.rand(n, 1, 1, 1, generator=g)  # varied brightness


def test_structure_conv_and_block():
    conv = _model("conv", 2, experts=4)
    layers = conv.moe_layers()
    assert [n for n, _ in layers] == ["body.layers.1.conv1", "body.layers.1.conv2"]  # the last stage only
    assert all(isinstance(m, TopKConv) and m.experts == 4 and m.k == 2 for _, m in layers)
    assert layers[0][1].weight.shape == (4, 16, 8, 3, 3)  # four full copies of the 8->16 conv
    block = _model("block", 1, experts=2)
    (name, b), = block.moe_layers()
    assert name == "body.layers.1" and isinstance(b, TopKBlock) and len(b.blocks) == 2
    # parameters: dense resnet-tiny plus (N-1) extra copies of the last block plus the gate
    dense = create_model("resnet-tiny", "dense", dataset="fashion-mnist")
    per_block = sum(p.numel() for p in dense.body.layers[1].parameters())
    n_block = sum(p.numel() for p in block.parameters())
    assert n_block == sum(p.numel() for p in dense.parameters()) + per_block + (8 * 2 + 2)
    # both stages of resnet18 as chosen by moe_stages
    r18 = create_model("resnet18", "moe", moe="block", experts=2, k=2, moe_stages=(3, 4))
    assert [n for n, _ in r18.moe_layers()] == [f"body.layers.{i}" for i in (4, 5, 6, 7)]
    assert r18.router_parameters() and len(r18.router_parameters()) == 8
    assert {id(p) for p in r18.router_parameters()}.isdisjoint({id(p) for p in r18.backbone_parameters()})


@pytest.mark.parametrize("moe,k,mode", [("conv", 1, "train"), ("conv", 2, "train"), ("conv", 3, "train"),
                                        ("block", 1, "eval"), ("block", 2, "eval")])
def test_sparse_equals_all_experts(moe, k, mode):
    """Computing only the chosen experts gives the same outputs and gradients (input, weights, gates)
    as computing every expert on every input and combining with the dense weight matrix."""
    x = _x()
    m = _spread_model(moe, k, mode == "train", x)
    outs = {}
    for ex in ("sparse", "masked"):
        m.zero_grad()
        xi = x.clone().requires_grad_(True)
        with execution(m, ex), routing_trace(m) as tr:
            y = m(xi)
        (y * torch.linspace(-1, 1, 10)).sum().backward()
        outs[ex] = (y.detach(), xi.grad.clone(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None},
                    tr.expert_sets())
    ys, gs, ps, es = outs["sparse"]
    ym, gm, pm, em = outs["masked"]
    assert torch.equal(es, em)
    for layer in es:  # every expert of every layer is used by some input of the batch
        assert len(torch.unique(layer)) == 3
    assert torch.allclose(ys, ym, atol=1e-5)
    assert torch.allclose(gs, gm, atol=1e-5)
    assert ps.keys() == pm.keys()
    router_grads = [n for n in ps if "router" in n]
    assert router_grads and all(ps[n].abs().sum() > 0 for n in router_grads)  # the gates are trained
    for n in ps:
        assert torch.allclose(ps[n], pm[n], atol=1e-5, rtol=1e-4), n


def test_top2_output_is_softmax_weighted_sum_of_two_experts():
    m = _model("conv", 2).eval()
    layer = m.moe_layers()[0][1]
    x = _x(6)
    seen = {}
    h = layer.register_forward_hook(lambda mod, inp, out: seen.update(inp=inp[0].x, out=out.x))
    with routing_trace(m) as tr:
        m(x)
    h.remove()
    logits = tr.logits()[0]
    top = logits.topk(2, dim=1)
    w = torch.softmax(top.values, dim=1)
    for b in range(6):
        want = sum(w[b, j] * torch.nn.functional.conv2d(seen["inp"][b:b + 1], layer.weight[top.indices[b, j]],
                                                        None, layer.stride, layer.padding) for j in range(2))
        assert torch.allclose(seen["out"][b:b + 1], want, atol=1e-5)
    assert torch.allclose(tr.weights()[0], w)
    assert torch.equal(tr.expert_sets()[0], top.indices.sort(dim=1).values)
    with pytest.raises(RuntimeError, match="expert_sets"):
        tr.experts()


def test_top1_straight_through_gate():
    """k = 1: the chosen expert's output unscaled (gate exactly 1), the gate's gradient that of the
    chosen softmax probability."""
    m = _model("conv", 1).train()
    x = _x(8)
    with routing_trace(m) as tr:
        m(x)
    w = tr.weights()[0]
    assert torch.equal(w.detach(), torch.ones(8, 1))
    p = torch.softmax(tr.logits()[0], dim=1).gather(1, tr.records[0].experts_k)
    g1, = torch.autograd.grad(w.sum(), tr.logits()[0], retain_graph=True)
    g2, = torch.autograd.grad(p.sum(), tr.logits()[0])
    assert torch.allclose(g1, g2) and g1.abs().sum() > 0


def test_capacity_keep_exact():
    e = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])  # B=4, k=2, N=3: cap = ceil(1.0 * 8 / 3) = 3
    keep = capacity_keep(e, 3, 1.0)
    # first choices (rank 0) in batch order first: expert 0 gets rows 0, 1, 2; expert 1 row 3;
    # second choices: expert 1 (rows 0, 2) -> 2nd and 3rd; expert 2 row 1; expert 0 row 3 -> its 4th: dropped
    assert keep.tolist() == [[True, True], [True, True], [True, True], [True, False]]
    keep_half = capacity_keep(e, 3, 0.5)  # cap = ceil(4 / 3) = 2
    assert keep_half.tolist() == [[True, True], [True, True], [False, False], [True, False]]


def test_capacity_and_noise_only_in_training():
    m = _model("conv", 2, capacity=0.5, noise=1.0)
    x = _x(12)
    m.eval()
    with torch.no_grad():
        a, b = m(x), m(x)
        single = torch.cat([m(x[i:i + 1]) for i in range(12)])
    assert torch.equal(a, b)  # no noise, no capacity in eval mode: deterministic per input ...
    assert torch.allclose(a, single, atol=1e-5)  # ... and independent of the rest of the batch
    m.train()
    outs, traces = [], []
    for ex in ("sparse", "masked"):
        torch.manual_seed(0)  # the same gate noise in both executions
        with torch.no_grad(), execution(m, ex), routing_trace(m) as tr:
            outs.append(m(x))
        traces.append(tr)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)  # capacity drops agree in both executions
    rec = traces[0].records[0]  # recorded: the noisy logits the choice used
    keep = capacity_keep(rec.experts_k, 3, 0.5)  # cap = ceil(0.5 * 12 * 2 / 3) = 4 of 24 assignments
    assert int(keep.sum()) <= 3 * 4 and (~keep).any()
    with torch.no_grad():
        torch.manual_seed(1)
        with routing_trace(m) as tr2:
            m(x)
    assert not torch.allclose(tr2.records[0].logits, rec.logits)  # fresh noise each forward (same batch)


def test_force_expert_sets():
    m = _model("block", 2).eval()
    x = _x(5)
    layer = m.moe_layers()[0][1]
    with torch.no_grad():
        with force_routing(m, 2), routing_trace(m) as tr:
            y = m(x)
        # one forced expert: exactly that block's output (weight 1)
        assert torch.equal(tr.expert_sets()[0], torch.full((5, 1), 2))
        assert torch.equal(tr.weights()[0], torch.ones(5, 1))
        with force_routing(m, {"*": torch.tensor([[0, 1]] * 5)}), routing_trace(m) as tr2:
            m(x)
        assert torch.equal(tr2.expert_sets()[0], torch.tensor([[0, 1]] * 5))
        assert torch.allclose(tr2.weights()[0], torch.softmax(tr2.logits()[0][:, :2], dim=1))
    # forcing expert 2 equals a model whose MoE block is replaced by expert 2's block
    with torch.no_grad():
        stem = m.body.stem
        from robustmoe_bench.models.routing import Routed, RoutingContext
        ctx = RoutingContext()
        r = m.body.layers[0](stem(Routed((x - m.mean) / m.std, None, 1, 1, ctx)))
        r = layer.blocks[2](r)
        want = m.body.fc(r.apply(lambda t: torch.nn.functional.adaptive_avg_pool2d(t, 1).flatten(1)))
    assert torch.allclose(y, want, atol=1e-5)
    with pytest.raises(ValueError, match="repeat"):
        with force_routing(m, {"*": torch.tensor([[1, 1]] * 5)}):
            m(x)
    with pytest.raises(ValueError, match="out of range"):
        with force_routing(m, 3):
            m(x)


def test_checkpoint_round_trip(tmp_path):
    m = _model("conv", 2, experts=4, noise=0.5, capacity=1.25, moe_stages=(1, 2)).eval()
    assert len(m.moe_layers()) == 4
    save_checkpoint(tmp_path / "c.pt", m, training={"method": "at-moe"})
    ck = load_checkpoint(tmp_path / "c.pt")
    assert ck.model.spec == m.spec and ck.model.spec.k == 2 and ck.model.spec.moe_stages == (1, 2)
    x = _x(4)
    with torch.no_grad():
        assert torch.equal(ck.model(x), m(x))


@pytest.mark.parametrize("kw,msg", [
    (dict(moe="conv", k=3, experts=2), "1 <= k <= experts"),
    (dict(moe="block", moe_stages=(4,)), "do not exist"),
    (dict(moe="conv", moe_stages=(0,)), "numbered from 1"),
    (dict(moe="slices"), "unknown expert kind"),
    (dict(moe="channel", k=2), "conv and block expert kinds only"),
    (dict(moe="conv", noise=-1.0), ">= 0"),
])
def test_bad_options(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        create_model("resnet-tiny", "moe", dataset="fashion-mnist", **kw)


def test_non_resnet_architecture_is_a_clear_error():
    with pytest.raises(ConfigError, match="resnet architectures only"):
        create_model("vgg-mini", "moe", moe="conv", k=2, dataset="fashion-mnist")


@pytest.mark.parametrize("moe", ["conv", "block"])
def test_flops_count_the_chosen_experts_only(moe):
    from robustmoe_bench.flops import gflops

    dense = gflops(create_model("resnet-tiny", "dense", dataset="fashion-mnist"))
    # the Dense cost of what one expert computes: the last stage's two 3x3 convs (+ the whole block for BlockMoE)
    last = {k: v for k, v in dense.per_module.items() if k.startswith("body.layers.1.")}
    one = (last["body.layers.1.conv1"] + last["body.layers.1.conv2"]) if moe == "conv" else sum(last.values())
    x = _x(8)
    for n, k in ((2, 1), (4, 1), (3, 2), (4, 3)):
        m = _model(moe, k, experts=n).eval()
        g = gflops(m, x)
        assert g.pathway == pytest.approx(dense.pathway + (k - 1) * one, rel=1e-9), (n, k)
        # the gates: global average pooling of the layer input (one FLOP per element) + a linear layer to N
        gates = (8 * 28 * 28 + 8 * n) + ((16 * 14 * 14 + 16 * n) if moe == "conv" else 0)
        assert g.router == pytest.approx(gates / 1e9, rel=1e-9)


def test_forcing_two_experts_on_a_top1_model_mixes_them():
    """A forced set larger than k still gets its softmax weights (no shortcut for k = 1 models)."""
    m = _model("conv", 1).eval()
    x = _x(4)
    with torch.no_grad():
        with force_routing(m, {"*": torch.tensor([[0, 1]] * 4)}):
            sparse = m(x)
        with force_routing(m, {"*": torch.tensor([[0, 1]] * 4)}), execution(m, "masked"):
            masked = m(x)
        with force_routing(m, 0):
            only0 = m(x)
    assert torch.allclose(sparse, masked, atol=1e-5) and not torch.allclose(sparse, only0, atol=1e-3)
