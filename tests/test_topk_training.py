"""Training the full-copy top-k family: balancing losses (values, in the objective, in the gradients),
configuration rules, and the methods/CLI end to end on tiny data."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers_data import write_fmnist_subset
from robustmoe_bench.checkpoint import read_meta
from robustmoe_bench.cli import run
from robustmoe_bench.errors import ConfigError
from robustmoe_bench.models import create_model, routing_trace
from robustmoe_bench.training import TrainConfig, train
from robustmoe_bench.training.config import CHANNEL_BALANCE_DEFAULTS
from robustmoe_bench.training.balance import balance_loss, layer_balance_loss
from robustmoe_bench.training.trades import trades_loss


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return write_fmnist_subset(tmp_path_factory.mktemp("fmnist-topk"), 512, 128)


def test_balance_loss_values():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]))
    experts = torch.tensor([[0], [1], [0], [2]])
    # switch: N * sum f_i P_i, f = (2, 1, 1)/4, P = mean prob = (0.4, 0.375, 0.225)
    want = 3 * (0.5 * 0.4 + 0.25 * 0.375 + 0.25 * 0.225)
    assert math.isclose(float(layer_balance_loss(logits, experts, "switch")), want, rel_tol=1e-6)
    p = torch.tensor([0.4, 0.375, 0.225])
    want_h = math.log(3) + float((p * p.log()).sum())
    assert math.isclose(float(layer_balance_loss(logits, experts, "entropy")), want_h, rel_tol=1e-5)
    # balanced routing is the minimum of both: switch = 1, entropy = 0
    uniform = torch.zeros(6, 3)
    assert math.isclose(float(layer_balance_loss(uniform, torch.tensor([[0], [1], [2]] * 2), "switch")), 1.0, rel_tol=1e-6)
    assert abs(float(layer_balance_loss(uniform, torch.tensor([[0]] * 6), "entropy"))) < 1e-6
    # collapse: everything on expert 0 with probability ~1 -> switch ~N, entropy ~log N
    collapsed = torch.tensor([[20.0, 0.0, 0.0]] * 4)
    assert float(layer_balance_loss(collapsed, torch.zeros(4, 1, dtype=torch.long), "switch")) > 2.99
    assert float(layer_balance_loss(collapsed, torch.zeros(4, 1, dtype=torch.long), "entropy")) > math.log(3) - 1e-3


def _batch(n: int = 16):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("kind", ["switch", "entropy"])
def test_balance_loss_is_in_the_objective_and_changes_router_gradients(kind):
    torch.manual_seed(0)
    m = create_model("resnet-tiny", "moe", moe="conv", experts=3, k=2, dataset="fashion-mnist").train()
    x, y = _batch()
    x_adv = (x + 0.05).clamp(0, 1)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    grads, totals = [], []
    for bal in (None, (kind, 0.5)):
        m.load_state_dict(state)  # same batch-norm statistics for both
        m.zero_grad()
        out = trades_loss(m, x, y, x_adv, 6.0, balance=bal)
        out.total.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
        totals.append((float(out.total.detach()), out.balance))
    (t0, b0), (t1, b1) = totals
    assert b0 is None and b1 is not None and b1 > 0
    assert math.isclose(t1 - t0, 0.5 * b1, rel_tol=1e-4, abs_tol=1e-6)  # total = TRADES + weight * balance
    # the balancing term reaches the gates and what feeds them, not what only comes after the last gate
    router = [n for n in grads[0] if ".router." in n]
    assert router and all(not torch.allclose(grads[0][n], grads[1][n]) for n in router)
    assert not torch.allclose(grads[0]["body.layers.1.conv1.weight"], grads[1]["body.layers.1.conv1.weight"])
    for n in ("body.layers.1.conv2.weight", "body.fc.weight"):
        assert torch.allclose(grads[0][n], grads[1][n]), n
    # recomputed by hand from a traced forward of the same state: the mean over the two forwards
    m.load_state_dict(state)
    with routing_trace(m) as tr:
        m(x)
        m(x_adv)
    by_hand = (balance_loss(tr.forwards[0], kind) + balance_loss(tr.forwards[1], kind)) / 2
    assert math.isclose(float(by_hand.detach()), b1, rel_tol=1e-5)


def _cfg(root: Path, **kw) -> TrainConfig:
    base = dict(method="at-moe", arch="resnet-tiny", dataset="fashion-mnist", epochs=1, batch_size=64,
                subset=128, holdout=64, lr=0.05, data_root=str(root), device="cpu")
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.mark.parametrize("kw,msg", [
    (dict(moe="conv", router="shared"), "--router only applies to --moe channel"),
    (dict(moe="block", scale=0.5), "--scale only applies to --moe channel"),
    (dict(k=2), "--k only applies to --moe conv or block"),
    (dict(method="advmoe-public", balance="switch"), "--balance cannot be used with --method advmoe-public"),
    (dict(method="advmoe-public", router_lr=0.1), "--router-lr cannot be used with --method advmoe-public"),
    (dict(router_lr=0.0), "--router-lr must be a number > 0"),
    (dict(router_z=-1.0), "--router-z must be a number >= 0"),
    (dict(balance="gini"), "unknown balancing loss 'gini'"),
    (dict(method="at-dense", router_lr=0.1), "--router-lr only apply to MoE models"),
    (dict(method="at-dense", moe="conv"), "--moe only apply to MoE models"),
    (dict(method="at-dense", moe="channel"), "--moe only apply to MoE models"),
    (dict(moe="conv", k=3), r"--k must be in \[1, experts=2\]"),
    (dict(moe="conv", balance="gini"), "unknown balancing loss 'gini'"),
    (dict(moe="conv", arch="vgg-mini"), "resnet architectures only"),
    (dict(moe="conv", moe_stages=[0]), "stage numbers from 1"),
    (dict(moe="conv", capacity=-1.0), "--capacity must be a number >= 0"),
    (dict(moe="tiles"), "unknown expert kind --moe 'tiles'"),
])
def test_config_rules(tmp_path, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        _cfg(tmp_path, **kw)


def test_config_defaults_and_presets(tmp_path):
    c = _cfg(tmp_path, moe="block", experts=4, k=2)
    assert (c.k, c.moe_stages, c.noise, c.capacity, c.balance, c.balance_weight) == (2, [], 0.0, 0.0, "switch", 0.5)
    assert c.router is None and c.scale is None and c.balance_term() == ("switch", 0.5)
    assert c.model_options() == dict(experts=4, moe="block", k=2, moe_stages=(), noise=0.0, capacity=0.0)
    # a preset's channel-MoE design (shared router, compact layout) is not forced onto full-copy experts
    p = TrainConfig.from_preset("fmnist-tiny", method="advmoe", moe="conv", k=2)
    assert p.router is None and p.moe == "conv"
    ch = TrainConfig.from_preset("fmnist-tiny", method="advmoe")
    # the channel family gets its balancing term (ours, see CHANNEL_BALANCE_DEFAULTS); advmoe-public does not
    d = CHANNEL_BALANCE_DEFAULTS
    assert ch.moe is None and ch.router == "shared" and ch.balance_term() == (d["balance"], d["balance_weight"])
    assert ch.router_lr_scale == d["router_lr"]
    pub = TrainConfig.from_preset("fmnist-tiny", method="advmoe-public")
    assert pub.balance_term() is None and pub.router_lr_scale == 1.0
    off = TrainConfig.from_preset("fmnist-tiny", method="at-moe", balance="none", router_lr=1.0)
    assert off.balance_term() is None and off.router_lr_scale == 1.0
    assert _cfg(tmp_path, moe="conv", balance="none").balance_term() is None


@pytest.mark.parametrize("method,moe,k", [("std", "block", 2), ("at-moe", "conv", 1), ("advmoe", "conv", 2)])
def test_methods_train_the_family(tmp_path, tiny_root, method, moe, k):
    extra = {"kind": "moe"} if method == "std" else {}
    res = train(_cfg(tiny_root, method=method, moe=moe, k=k, experts=3, **extra), tmp_path / "run", progress=False)
    meta = read_meta(res.ckpt)
    assert meta["model"]["moe"] == moe and meta["model"]["k"] == k and meta["model"]["experts"] == 3
    assert meta["training"]["balance"] == "switch" and meta["training"]["balance_weight"] == 0.5
    row = res.history[0]
    assert 1.0 <= row["balance_loss"] <= 3.0  # the switch loss lies in [1, N]
    if method == "advmoe":
        assert "router_loss" in row


def test_cli_train_block_top2(tmp_path, tiny_root, capsys):
    out = tmp_path / "b"
    args = ["train", "--method", "advmoe", "--moe", "block", "--k", "2", "--experts", "3", "--moe-stages", "1,2",
            "--balance", "entropy", "--arch", "resnet-tiny", "--dataset", "fashion-mnist", "--epochs", "1",
            "--batch-size", "64", "--subset", "128", "--data-root", str(tiny_root), "--device", "cpu",
            "--out", str(out), "--quiet"]
    assert run(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["moe"] == "block" and cfg["k"] == 2 and cfg["moe_stages"] == [1, 2] and cfg["balance"] == "entropy"
    meta = read_meta(out / "ckpt.pt")
    assert meta["model"]["moe_stages"] == [1, 2]
    bad = tmp_path / "bad"
    assert run(args[:-3] + ["--moe-stages", "x", "--out", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--moe-stages: 'x' is not a stage number" in err and "Traceback" not in err
    assert not bad.exists()
