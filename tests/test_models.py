"""The model family: construction by name, widths per kind, exact sparse == masked equivalence of
outputs, gradients and BN statistics, and the routing trace / controls."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from robustmoe_bench.errors import ConfigError
from robustmoe_bench.models import (
    RoutedConv2d,
    create_model,
    force_routing,
    list_models,
    routing_trace,
)

torch.set_num_threads(1)


def _diverse(model, seed=0, x=None, train=False):
    """Random router weights centred on a calibration batch, so inputs spread over the experts (fresh
    routers send almost every input to one expert, which would leave the multi-group dispatch untested).
    ``x``/``train``: calibrate on the test's own batch in the test's mode (batch norm in train mode
    normalises with the batch's statistics, so scores differ from eval mode)."""
    g = torch.Generator().manual_seed(seed)
    feats = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: feats.__setitem__(mod, inp[0].detach()))
             for m in model.modules() if isinstance(m, torch.nn.Linear) and id(m.weight) in
             {id(p) for p in model.router_parameters()}]
    state = copy.deepcopy(model.state_dict())  # calibration must not move batch-norm statistics
    model.train(train)
    with torch.no_grad():
        calib = x if (x is not None and x.shape[0] >= 4) else _images(16, 99)
        model(calib.to(next(model.parameters()).dtype))
        for h in hooks:
            h.remove()
        model.load_state_dict(state)
        model.eval()
        for m, f in feats.items():
            m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=m.weight.dtype) / f.std(0).mean().clamp_min(1e-6))
            m.bias.copy_(-(f.mean(0) @ m.weight.T))  # centre: the decision depends on the input
    return model


def _images(batch, seed, shape=(3, 32, 32)):
    """Images whose per-input brightness varies a lot, so routers send them to different experts."""
    g = torch.Generator().manual_seed(seed)
    scale, offset = torch.rand(batch, 1, 1, 1, generator=g), torch.rand(batch, 1, 1, 1, generator=g)
    stripes = (torch.arange(shape[-1]) % torch.randint(2, 6, (batch, 1, 1, 1), generator=g) == 0).float()
    return (torch.rand(batch, *shape, generator=g) * scale * 0.5 + offset * stripes).clamp(0, 1).double()


def _pair(arch, n, r, router, dataset="cifar10", layout="compact", ste="identity", x=None, train=False):
    torch.manual_seed(0)
    # float64 so that the comparison tests the algorithm, not float32 summation order
    a = _diverse(create_model(arch, kind="moe", experts=n, scale=r, router=router, dataset=dataset, layout=layout,
                              ste=ste).double(), x=x, train=train)
    b = copy.deepcopy(a)
    b.execution = "masked"
    return a, b


#: every (expert layout, router design) pair; the straight-through estimator varies too
DESIGNS = [("compact", "resnet", "identity"), ("compact", "shared", "softmax"), ("compact", "layer", "identity"),
           ("slice", "layer", "softmax"), ("slice", "shared", "identity"), ("slice", "resnet", "softmax")]


@pytest.mark.parametrize("layout,router,ste", DESIGNS)
@pytest.mark.parametrize("n,r", [(2, 0.5), (4, 0.25)])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("batch", [1, 7])
def test_sparse_equals_masked_reference(layout, router, ste, n, r, train, batch):
    x = _images(batch, 1)
    sparse, masked = _pair("resnet-tiny", n, r, router, layout=layout, ste=ste, x=x, train=train)
    sparse.train(train), masked.train(train)
    y = torch.arange(batch) % 10
    with routing_trace(sparse) as tr:
        out_s = sparse(x)
    out_m = masked(x)
    assert (out_s - out_m).abs().max().item() <= 1e-5
    F.cross_entropy(out_s, y).backward()
    F.cross_entropy(out_m, y).backward()
    for (name, ps), pm in zip(sparse.named_parameters(), masked.parameters()):
        gs = torch.zeros_like(ps) if ps.grad is None else ps.grad
        gm = torch.zeros_like(pm) if pm.grad is None else pm.grad
        assert (gs - gm).abs().max().item() <= 1e-5, name
    for bs, bm in zip(sparse.buffers(), masked.buffers()):
        assert (bs.float() - bm.float()).abs().max().item() <= 1e-5
    # the router really is trained through the straight-through gate
    assert max(p.grad.abs().max().item() for p in sparse.router_parameters()) > 0
    if batch > 1:
        assert tr.experts()[0].unique().numel() > 1, "test must exercise several expert groups"


@pytest.mark.parametrize("layout", ["compact", "slice"])
def test_equivalence_with_an_empty_expert_and_input_gradients(layout):
    x = _images(5, 3)
    sparse, masked = _pair("resnet-tiny", 4, 0.25, "layer", layout=layout, x=x)
    with routing_trace(sparse) as tr:
        sparse(x)
    counts = torch.stack([torch.bincount(e, minlength=4) for e in tr.experts()])
    assert (counts == 0).any(), "some expert must receive no input in some layer"
    xs, xm = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    sparse(xs).logsumexp(1).sum().backward()
    masked(xm).logsumexp(1).sum().backward()
    assert (xs.grad - xm.grad).abs().max().item() <= 1e-5


@pytest.mark.parametrize("layout,router", [("compact", "layer"), ("compact", "resnet"), ("slice", "layer")])
@pytest.mark.parametrize("arch", ["vgg-mini", "densenet-mini", "wrn-10-1"])
def test_other_backbones_sparse_equals_masked(arch, layout, router):
    x = _images(6, 2)
    sparse, masked = _pair(arch, 2, 0.5, router, layout=layout, x=x, train=True)
    sparse.train(), masked.train()
    out_s, out_m = sparse(x), masked(x)
    assert (out_s - out_m).abs().max().item() <= 1e-5
    out_s.sum().backward(), out_m.sum().backward()
    for ps, pm in zip(sparse.parameters(), masked.parameters()):
        gs = torch.zeros_like(ps) if ps.grad is None else ps.grad
        gm = torch.zeros_like(pm) if pm.grad is None else pm.grad
        assert (gs - gm).abs().max().item() <= 1e-5


@torch.no_grad()
def _random_bn(model, seed=0):
    """Non-trivial eval-mode batch norms (running statistics and affine parameters), so a fold is tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
            m.weight.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64) * 0.2)
    return model


@pytest.mark.parametrize("arch", ["resnet-tiny", "vgg-mini"])
@pytest.mark.parametrize("kind", ["dense", "sdense", "sparse", "moe-layer-slice", "moe-shared-slice",
                                  "moe-resnet-compact", "moe-layer-compact"])
def test_eval_batch_norm_folding_is_exact(arch, kind):
    """Eval mode folds BN into the preceding conv (sparse execution); outputs and every gradient (input,
    parameters, the router's straight-through gate) equal the unfolded model and the masked reference."""
    torch.manual_seed(0)
    k, router, layout = (kind.split("-") + ["layer", "compact"])[:3]
    model = create_model(arch, kind=k, experts=2, scale=0.5, router=router, layout=layout).double()
    if k == "moe":
        _diverse(model)
    if k == "sparse":  # a mask that is not the first channels, so folding must really use it
        for m in model.modules():
            if isinstance(m, RoutedConv2d) and m.channel_mask is not None:
                m.channel_mask.init_from_weight(m.weight)
    _random_bn(model).eval()
    refs = {"unfolded": copy.deepcopy(model), "masked": copy.deepcopy(model)}
    refs["unfolded"].fold_bn = False
    refs["masked"].execution = "masked"
    x = _images(7, 4)
    y = torch.arange(7) % 10
    runs = {}
    for name, net in [("folded", model), *refs.items()]:
        xg = x.clone().requires_grad_(True)
        out = net(xg)
        F.cross_entropy(out, y).backward()
        runs[name] = (out.detach(), xg.grad, [p.grad for p in net.parameters()])
    out_f, gx_f, gp_f = runs["folded"]
    assert gx_f.abs().max().item() > 0
    for name in refs:
        out_r, gx_r, gp_r = runs[name]
        assert (out_f - out_r).abs().max().item() <= 1e-9, name
        assert (gx_f - gx_r).abs().max().item() <= 1e-9, name
        for a, b in zip(gp_f, gp_r):
            if a is None or b is None:
                assert a is None or a.abs().max().item() == 0, name
                continue
            assert (a - b).abs().max().item() <= 1e-9, name
    if k == "moe":
        assert max(p.grad.abs().max().item() for p in model.router_parameters()) > 0
    # inference: the same values without any gradient
    with torch.inference_mode():
        assert (model(x) - out_f).abs().max().item() <= 1e-9


def _moe_widths(model):
    return [m.out_channels for _, m in model.moe_layers()]


STAGE_WIDTHS = [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4


def test_widths_per_kind_follow_the_spec():
    dense = create_model("resnet18", kind="dense", dataset="cifar10")
    sdense = create_model("resnet18", kind="sdense", scale=0.5, dataset="cifar10")
    sparse = create_model("resnet18", kind="sparse", scale=0.5, dataset="cifar10")
    convs = lambda m: [c for c in m.modules() if isinstance(c, RoutedConv2d)]
    assert convs(dense)[0].out_channels == 64 and convs(sdense)[0].out_channels == 32
    masks = [c.channel_mask for c in convs(sparse) if c.channel_mask is not None]
    assert len(masks) == 16 and all(int(m.mask.sum()) == m.keep == c // 2 for m, c in zip(masks, STAGE_WIDTHS))
    n_dense = sum(p.numel() for p in dense.parameters())
    for layout in ("slice", "compact"):
        moe = create_model("resnet18", kind="moe", experts=2, scale=0.5, layout=layout, dataset="cifar10")
        moe4 = create_model("resnet18", kind="moe", experts=4, scale=0.25, layout=layout, dataset="cifar10")
        assert convs(moe)[0].out_channels == 64  # the stem stays dense at full width
        assert len(moe.moe_layers()) == 16  # the 3x3 convs of the 8 basic blocks
        # both layouts hold N*r*C channels per MoE layer
        assert _moe_widths(moe) == _moe_widths(moe4) == STAGE_WIDTHS, layout
        n_router = sum(p.numel() for p in moe.router_parameters())
        n_moe = sum(p.numel() for p in moe.parameters()) - n_router
        if layout == "slice":
            # N*r = 1: a slice-layout MoE has exactly Dense's conv parameters (+ routers)
            assert n_moe == n_dense
        else:
            # compact experts read the r*C-channel output of the layer before: each expert is [rC, rC_in]
            assert [m.expert_width for _, m in moe.moe_layers()] == [c // 2 for c in STAGE_WIDTHS]
            assert [m.expert_width for _, m in moe4.moe_layers()] == [c // 4 for c in STAGE_WIDTHS]
            assert n_moe == 5565450 and n_router == 269202  # the public code's backbone and router counts


def test_every_registered_architecture_builds_and_runs():
    for arch in ["resnet-tiny", "resnet-mini", "vgg-mini", "densenet-mini"]:
        for kind in ["dense", "sdense", "sparse", "moe"]:
            m = create_model(arch, kind=kind, dataset="fashion-mnist").eval()
            assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    big = {"resnet18", "vgg16-bn", "densenet", "wrn-28-10"}
    assert big <= set(list_models())
    # ImageNet stems: 7x7/2 conv + max-pool
    m = create_model("resnet18", kind="moe", dataset="imagenet").eval()
    assert m.spec.stem == "imagenet" and m.body.stem.conv.kernel_size == 7
    # any wrn-D-W works
    assert create_model("wrn-10-2", kind="moe", dataset="cifar10").spec.arch == "wrn-10-2"


@pytest.mark.parametrize("kwargs,msg", [
    (dict(name="resnet99"), "unknown architecture"),
    (dict(name="resnet-tiny", kind="moe", experts=1), "at least 2 experts"),
    (dict(name="resnet-tiny", kind="sdense", scale=1.5), "scale must be in (0, 1]"),
    (dict(name="resnet-tiny", kind="moe", router="global"), "unknown router"),
    (dict(name="resnet-tiny", kind="wide"), "unknown model kind"),
])
def test_bad_model_requests_are_config_errors(kwargs, msg):
    name = kwargs.pop("name")
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        create_model(name, dataset="cifar10", **kwargs)


def test_trace_and_forced_routing():
    model = _diverse(create_model("resnet-tiny", kind="moe", experts=2, router="layer", dataset="cifar10").double()).eval()
    x = _images(8, 4)
    with routing_trace(model) as tr:
        base = model(x)
    assert tr.experts().shape == (len(model.moe_layers()), 8)
    assert tr.layer_names == [n for n, _ in model.moe_layers()]
    assert all(lg.shape == (8, 2) for lg in tr.logits())
    assert torch.equal(tr.experts(), torch.stack([lg.argmax(1) for lg in tr.logits()]))
    with force_routing(model, 1), routing_trace(model) as tr1:
        model(x)
    assert bool((tr1.experts() == 1).all())
    first = tr.layer_names[0]
    with force_routing(model, {first: torch.zeros(8, dtype=torch.long)}), routing_trace(model) as tr0:
        model(x)
    assert bool((tr0.experts()[0] == 0).all())
    # forcing every layer to the experts it chose anyway reproduces the output exactly
    with force_routing(model, {n: e for n, e in zip(tr.layer_names, tr.experts())}):
        assert (model(x) - base).abs().max().item() == 0
    assert model.execution == "sparse" and model._forced is None  # restored


@pytest.mark.parametrize("layout,router", [("compact", "resnet"), ("compact", "layer"), ("slice", "layer"),
                                           ("slice", "shared")])
def test_trained_model_keeps_every_residual(monkeypatch, layout, router):
    """Build item 0: after training, every residual add carries the block input into its output.

    ``routed_add`` is wrapped to record, per input, ``out - main`` against the shortcut: a routed
    shortcut arrives whole (same norm; in the slice layout it is moved onto the output's slice when the
    experts differ), a dense one contributes (non-zero) on every input.
    """
    from robustmoe_bench.models import backbones

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(96, 1, 16, 16, generator=g)
    y = (x.mean((1, 2, 3)) * 40).long() % 10  # a learnable label from brightness
    # ResNet-18 (two blocks per stage: routed identity shortcuts) on 16x16 inputs to stay fast
    model = create_model("resnet18", kind="moe", experts=2, router=router, layout=layout,
                         dataset="fashion-mnist", input_shape=(1, 16, 16))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for step in range(12):
        idx = torch.randint(0, 96, (16,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    records = []
    real_add = backbones.routed_add

    def recording_add(main, shortcut):
        out = real_add(main, shortcut)
        delta = (out.to_full() - main.to_full()).flatten(1).norm(dim=1)
        sc = shortcut.to_full().flatten(1).norm(dim=1)
        moved = (main.expert is not None and shortcut.expert is not None
                 and bool((main.expert != shortcut.expert).any()))
        records.append((delta, sc, shortcut.expert is not None or main.expert is None, moved))
        return out

    monkeypatch.setattr(backbones, "routed_add", recording_add)
    for execution in ("sparse", "masked"):
        model.execution = execution
        with torch.no_grad():
            model(x)
    assert len(records) == 2 * len(model.body.layers)  # one add per residual block and execution
    for delta, sc, whole, _ in records:
        assert bool((sc > 0).all())  # every input has a non-zero shortcut to lose
        if whole:
            assert torch.allclose(delta, sc, rtol=1e-5, atol=1e-6)
        else:  # a dense shortcut onto a routed block output: its channels on the output's slice
            assert bool((delta > 0).all())
    if layout == "slice" and router == "layer":
        # the case that used to drop residuals: an input whose block output expert differs from its input's
        assert any(moved for *_, moved in records)
