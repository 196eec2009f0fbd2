"""Routing health (issue 20): the collapse detector, the forced-expert prediction change, and where
the expert use is recorded (training epochs, evaluation results)."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from helpers_models import make_diverse_routing_moe, make_masked_gradient_moe
from robustmoe_bench.adapters.expert_use import (COLLAPSED_SHARE, ExpertUse, ExpertUseMeter, describe_uses,
                                                 expert_use_of, forced_change_rate)
from robustmoe_bench.errors import RoutingCollapseWarning
from robustmoe_bench.models import create_model


def _constant_router(model):
    """Make every input take expert 0: the shared router's bias dominates its input-dependent part."""
    with torch.no_grad():
        model.router.fc.bias[0] += 1e4
    return model


def test_expert_use_of_sets():
    # layer 0: 3 of 4 inputs on expert 1; layer 1: every input on expert 0 (collapsed)
    sets = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0]])
    u = ExpertUse.of(sets, 2, ["a", "b"])
    assert u.share == [[0.25, 0.75], [1.0, 0.0]]
    assert u.busiest_share == [0.75, 1.0] and u.max_busiest == 1.0
    h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert u.entropy_normalised == [round(h, 4), 0.0]
    assert u.collapsed and u.collapsed_layers == ["b"] and u.mark() == "COLLAPSED in 1 of 2 layers"
    assert "busiest expert 75-100 % of 4 inputs over 2 MoE layers (balanced: 50 %)" in u.summary()
    assert ExpertUse.from_dict(json.loads(json.dumps(u.to_dict()))) == u
    # top-k sets: shares are the fraction of sets holding each expert (they sum to k)
    k2 = ExpertUse.of(torch.tensor([[[0, 1], [0, 2], [1, 2], [0, 1]]]), 3)
    assert k2.share == [[0.75, 0.75, 0.5]] and not k2.collapsed
    # the meter concatenates batches
    meter = ExpertUseMeter(2, ["a", "b"])
    meter.add(sets[:, :2])
    meter.add(sets[:, 2:])
    assert meter.result() == u
    assert describe_uses([None, u.to_dict()]) == "-, 100 % (COLLAPSED in 1 of 2 layers)"
    with pytest.raises(ValueError, match="expert sets must be"):
        ExpertUse.of(torch.zeros(0, 3, dtype=torch.long), 2)


def test_collapse_threshold_is_the_busiest_share():
    just_below = torch.cat([torch.zeros(98, dtype=torch.long), torch.ones(2, dtype=torch.long)])[None]
    at = torch.cat([torch.zeros(99, dtype=torch.long), torch.ones(1, dtype=torch.long)])[None]
    assert ExpertUse.of(just_below, 2).busiest_share == [0.98] and not ExpertUse.of(just_below, 2).collapsed
    assert ExpertUse.of(at, 2).busiest_share == [COLLAPSED_SHARE] and ExpertUse.of(at, 2).collapsed


def test_detector_flags_a_constant_router_and_not_a_splitting_one():
    model, x, _ = make_diverse_routing_moe("shared", n=32)
    split = expert_use_of(model, x)
    assert split is not None and split.n_inputs == 32 and split.n_experts == 2
    assert not split.collapsed and split.mark() == ""
    assert all(0.4 <= b <= 0.6 for b in split.busiest_share)  # recalibrated to about half per expert
    assert all(e > 0.9 for e in split.entropy_normalised)

    dead = expert_use_of(_constant_router(model), x)
    assert dead.collapsed and dead.mark() == "COLLAPSED" and dead.busiest_share == [1.0] * len(dead.layers)
    assert dead.share[0] == [1.0, 0.0] and dead.entropy_normalised == [0.0] * len(dead.layers)
    # per-layer routers: one collapsed layer flags the model
    per_layer, xl, _ = make_diverse_routing_moe("layer", n=32)
    with torch.no_grad():
        per_layer.moe_layers()[-1][1].router.fc.bias[1] += 1e4  # the last layer: the others see the same inputs
    one = expert_use_of(per_layer, xl)
    assert one.collapsed and one.collapsed_layers == [one.layers[-1]] and one.mark() == f"COLLAPSED in 1 of {len(one.layers)} layers"


def test_forced_change_finds_the_hidden_expert():
    # every clean input takes expert 0 (a collapsed router), and expert 1 misclassifies every input:
    # the routing matters for every prediction although only one expert is ever used
    model, x, _ = make_masked_gradient_moe(n=16)
    use = expert_use_of(model, x)
    assert use.collapsed and use.share[0] == [1.0, 0.0]
    assert forced_change_rate(model, x) == 1.0


def test_forced_change_is_zero_when_experts_compute_the_same_function():
    model, x, _ = make_diverse_routing_moe("shared", n=16)
    dense = create_model("resnet-tiny", kind="dense", dataset="fashion-mnist").eval()
    assert expert_use_of(dense, x) is None and forced_change_rate(dense, x) is None
    # zero every conv weight: every expert's output is the same (zero) and so is the prediction
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m not in set(model.router.modules()):
                m.weight.zero_()
    assert forced_change_rate(model, x) == 0.0


def test_training_logs_expert_use_per_epoch_and_warns_once(tmp_path):
    from helpers_data import write_fmnist_subset
    from robustmoe_bench.training import TrainConfig, train
    from robustmoe_bench.training.loop import validation_examples

    root = write_fmnist_subset(tmp_path, n_train=512, n_test=32)
    # the switch off (no balancing term, the routers at the schedule's rate): a collapse is warned about
    cfg = TrainConfig.from_dict(dict(method="std", kind="moe", arch="resnet-tiny", dataset="fashion-mnist", epochs=2,
                                     batch_size=64, subset=128, holdout=64, lr=0.05, data_root=str(root),
                                     device="cpu", balance="none", router_lr=1.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train(cfg, tmp_path / "run", progress=False)
    n_val = int(validation_examples(cfg)[0].shape[0])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        use = ExpertUse.from_dict(row["expert_use"])
        assert use.n_inputs == n_val and use.n_experts == 2 and len(use.layers) >= 1
        assert all(abs(sum(s) - 1.0) < 1e-3 for s in use.share)
    flagged = [ExpertUse.from_dict(r["expert_use"]).collapsed for r in rows]
    ours = [w for w in caught if issubclass(w.category, RoutingCollapseWarning)]
    assert len(ours) == (1 if any(flagged) else 0)
    if ours:
        assert "routing collapsed" in str(ours[0].message) and "--balance" in str(ours[0].message)
    assert res.history[-1]["expert_use"] == rows[-1]["expert_use"]


def test_evaluation_records_expert_use(tmp_path):
    from helpers_data import write_fmnist_subset
    from robustmoe_bench.evaluation import evaluate

    root = write_fmnist_subset(tmp_path, n_train=32, n_test=24)
    model, _, _ = make_diverse_routing_moe("shared", n=8)
    res = evaluate(model, "quick", n_examples=24, data_root=root, progress=False,
                   dataset="fashion-mnist", check_examples=0)
    assert res.expert_use is not None and res.expert_use["n_inputs"] == 24
    assert res.collapsed == res.expert_use["collapsed"]
    dead = evaluate(_constant_router(model), "quick", n_examples=24, data_root=root, progress=False,
                    dataset="fashion-mnist", check_examples=0)
    assert dead.collapsed and dead.expert_use["busiest_share"][0] == 1.0
    dense = create_model("resnet-tiny", kind="dense", dataset="fashion-mnist").eval()
    d = evaluate(dense, "quick", n_examples=24, data_root=root, progress=False, dataset="fashion-mnist",
                 check_examples=0)
    assert d.expert_use is None and not d.collapsed


def _collapsed_toy(seed: int = 0):
    """A 2-expert ``resnet-tiny`` MoE whose shared router sends every input to expert 0 by a small margin
    (0.1-2.5 logits), with the MoE convolutions zeroed: the task loss then gives the router no gradient
    at all, so whatever moves the routing is the gate term alone."""
    net, x, y = make_diverse_routing_moe("shared", n=64, spread=0.5, seed=seed)
    with torch.no_grad():
        for _, m in net.moe_layers():
            m.weight.zero_()
        d = net.router_scores(x)
        net.router.fc.bias[0] += float((d[:, 1] - d[:, 0]).max()) + 0.1
    return net, x, y


@pytest.mark.parametrize("balance", ["switch", "entropy", "cv2"])
def test_balancing_term_recovers_a_collapsed_moe(balance):
    """The channel family's balancing term (ours): on, a collapsed router uses both experts within a few
    steps of the real training step; off, it stays collapsed (nothing rewards the other expert)."""
    from robustmoe_bench.training import TrainConfig
    from robustmoe_bench.training.loop import make_optimizer
    from robustmoe_bench.training.methods import StepContext, get_method, set_trainable

    def steps(term: str, n: int = 10) -> tuple[list[float], float]:
        net, x, y = _collapsed_toy()
        assert expert_use_of(net, x).busiest_share == [1.0] * 4  # collapsed before training
        cfg = TrainConfig.from_dict(dict(method="std", kind="moe", arch="resnet-tiny", dataset="fashion-mnist",
                                         experts=2, batch_size=64, lr=1.0, momentum=0.0, weight_decay=0.0,
                                         device="cpu", balance=term, balance_weight=0.5, router_lr=1.0))
        assert (cfg.balance_term() is None) == (term == "none")
        gate = list(net.router.fc.parameters())  # the gate's last layer: a linear gate on fixed features
        set_trainable(net, gate)
        opt = make_optimizer(net, [gate], cfg)
        method = get_method("std")
        ctx = StepContext(net, net, opt, cfg, torch.Generator().manual_seed(0))
        before = [p.detach().clone() for p in gate]
        busiest = []
        for _ in range(n):
            method.step(ctx, [(x, y)])
            busiest.append(expert_use_of(net, x).max_busiest)
        moved = max(float((p - b).abs().max()) for p, b in zip(gate, before))
        return busiest, moved

    on, moved_on = steps(balance)
    assert min(on[:8]) <= 0.75  # both experts in use within a few steps
    assert on[-1] <= 0.75 and moved_on > 0
    off, moved_off = steps("none")
    assert off == [1.0] * 10 and moved_off == 0.0
