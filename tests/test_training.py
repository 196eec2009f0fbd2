"""Training: TRADES attack, method steps, at-sparse phases, output folders, exact resume after SIGKILL,
two-process data-parallel training. Tiny models (resnet-tiny) on tiny IDX copies of Fashion-MNIST."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from robustmoe_bench.checkpoint import load_checkpoint, read_meta
from robustmoe_bench.cli import run
from robustmoe_bench.data import load_dataset
from robustmoe_bench.errors import ConfigError
from robustmoe_bench.models import create_model
from robustmoe_bench.training import TrainConfig, get_method, pgd_kl, train
from robustmoe_bench.training.distributed import DistContext
from robustmoe_bench.training.loop import _Data, _epoch_batches
from robustmoe_bench.training.methods import StepContext, trades_step
from helpers_data import write_fmnist_subset

REPO = Path(__file__).resolve().parents[1]
PY = str(REPO / ".venv" / "bin" / "python")
TORCHRUN = str(REPO / ".venv" / "bin" / "torchrun")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """512 training and 128 test images of the real Fashion-MNIST, written as IDX files."""
    return write_fmnist_subset(tmp_path_factory.mktemp("fmnist-tiny"), 512, 128)


def tiny_cfg(root: Path, **kw) -> TrainConfig:
    base = dict(method="at-dense", arch="resnet-tiny", dataset="fashion-mnist", epochs=2, batch_size=64,
                subset=256, holdout=64, lr=0.05, data_root=str(root), device="cpu")
    base.update(kw)
    return TrainConfig.from_dict(base)


def cli_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--arch", "resnet-tiny", "--dataset", "fashion-mnist", "--epochs", "2", "--batch-size", "64",
            "--subset", "256", "--data-root", str(root), "--device", "cpu", "--out", str(out), "--quiet", *extra]


# --------------------------------------------------------------------------- TRADES attack
def test_pgd_kl_stays_in_ball_uses_input_grads_only_and_raises_kl():
    torch.manual_seed(0)
    m = create_model("resnet-tiny", "moe", dataset="fashion-mnist")
    m.train()
    x = torch.rand(16, 1, 28, 28)
    eps = 0.1
    g = torch.Generator().manual_seed(0)
    xa = pgd_kl(m, x, eps, steps=5, step_size=0.03, generator=g)
    assert m.training, "the caller's mode must be restored"
    assert all(p.grad is None for p in m.parameters()), "the attack must not form parameter gradients"
    assert float((xa - x).abs().max()) <= eps + 1e-6 and float(xa.min()) >= 0 and float(xa.max()) <= 1
    m.eval()
    with torch.no_grad():
        p = torch.softmax(m(x), 1)
        kl = lambda z: float(torch.nn.functional.kl_div(torch.log_softmax(m(z), 1), p, reduction="batchmean"))
        rand = (x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * eps).clamp(0, 1)
        assert kl(xa) > 2 * kl(rand)


def test_advmoe_steps_update_only_their_group():
    torch.manual_seed(0)
    net = create_model("resnet-tiny", "moe", dataset="fashion-mnist")
    method = get_method("advmoe")
    groups = method.param_groups(net, 0)
    opt = torch.optim.SGD([{"params": g} for g in groups], lr=0.1, momentum=0.9)
    cfg = TrainConfig.from_dict(dict(method="advmoe", arch="resnet-tiny", dataset="fashion-mnist"))
    ctx = StepContext(net, net, opt, cfg, torch.Generator().manual_seed(0))
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    before = [[p.detach().clone() for p in g] for g in groups]
    trades_step(ctx, (x, y), group=0)  # router step
    changed = [[not torch.equal(a, p) for a, p in zip(b, g)] for b, g in zip(before, groups)]
    assert any(changed[0]) and not any(changed[1])
    mid = [[p.detach().clone() for p in g] for g in groups]
    trades_step(ctx, (x, y), group=1)  # backbone step
    changed = [[not torch.equal(a, p) for a, p in zip(b, g)] for b, g in zip(mid, groups)]
    assert not any(changed[0]) and sum(changed[1]) > len(groups[1]) // 2


def test_advmoe_public_same_batch_backbone_then_router(tiny_root):
    from robustmoe_bench.data import as_tensors
    x, y = as_tensors(load_dataset("fashion-mnist", "train", tiny_root), torch.arange(64))
    torch.manual_seed(0)
    net = create_model("resnet-tiny", "moe", dataset="fashion-mnist")
    assert net.shares_routing and net.spec.router == "resnet" and net.spec.layout == "compact"
    method = get_method("advmoe-public")
    groups = method.param_groups(net, 0)
    assert {id(p) for p in groups[0]} == {id(p) for p in net.router_parameters()}
    opt = torch.optim.SGD([{"params": g} for g in groups], lr=0.01)
    cfg = TrainConfig.from_dict(dict(method="advmoe-public", arch="resnet-tiny", dataset="fashion-mnist"))
    ctx = StepContext(net, net, opt, cfg, torch.Generator().manual_seed(0))

    def router_ce() -> float:  # the router's class -> expert (y mod N) loss on the batch, train-mode BN
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(net.train().router_scores(x), y % 2))

    before = [[p.detach().clone() for p in g] for g in groups]
    ce0 = router_ce()
    res = method.step(ctx, [(x, y)])
    assert set(res.losses) == {"loss", "natural", "robust", "router"} and res.seen == 64
    assert all(math.isfinite(v) for v in res.losses.values())
    assert res.losses["router"] > 6.0 * 0.5  # alpha * CE, CE near ln 2 for a fresh router
    changed = [[not torch.equal(a, p) for a, p in zip(b, g)] for b, g in zip(before, groups)]
    assert sum(changed[0]) > len(groups[0]) // 2 and sum(changed[1]) > len(groups[1]) // 2
    assert router_ce() < ce0 - 0.01, (ce0, router_ce())


def test_pgd_kl_router_head_moves_router_scores():
    torch.manual_seed(0)
    net = create_model("resnet-tiny", "moe", dataset="fashion-mnist").eval()
    x = torch.rand(16, 1, 28, 28)
    g = lambda: torch.Generator().manual_seed(0)
    plain = pgd_kl(net, x, 0.1, 5, 0.03, g())
    joint = pgd_kl(net, x, 0.1, 5, 0.03, g(), heads=[net.router_scores])
    with torch.no_grad():
        p = torch.softmax(net.router_scores(x), 1)
        kl = lambda z: float(torch.nn.functional.kl_div(torch.log_softmax(net.router_scores(z), 1), p,
                                                        reduction="batchmean"))
        assert kl(joint) > kl(plain)


def test_old_config_json_resumes_as_the_same_run():
    from robustmoe_bench.training.outputs import upgrade_config
    old = dict(method="at-dense", arch="resnet-tiny", dataset="fashion-mnist", experts=2, scale=0.5, router="layer",
               step_size=0.125)
    cfg = TrainConfig.from_dict(upgrade_config(old))
    assert cfg.experts is None and cfg.router is None and cfg.scale is None and cfg.trades_start == "uniform"
    moe = TrainConfig.from_dict(upgrade_config(dict(old, method="at-moe")))
    assert (moe.layout, moe.ste, moe.router, moe.experts, moe.step_size) == ("slice", "softmax", "layer", 2, 0.125)


def test_validation_split_is_fixed_disjoint_and_capped():
    from robustmoe_bench.training import validation_split
    val, rest = validation_split(1000, 500)
    assert val.numel() == 200 and rest.numel() == 800
    assert sorted(val.tolist() + rest.tolist()) == list(range(1000))
    assert torch.equal(validation_split(1000, 500)[0], val)  # the same draw for every run and seed
    assert validation_split(60000, 500)[0].numel() == 500


def test_std_trains_any_kind(tmp_path, tiny_root):
    res = train(tiny_cfg(tiny_root, method="std", kind="moe", epochs=2, router="shared"), tmp_path / "m",
                progress=False)
    meta = read_meta(res.ckpt)
    assert meta["model"]["kind"] == "moe" and meta["model"]["router"] == "shared"
    assert meta["training"]["kind"] == "moe" and meta["training"]["method"] == "std"
    rows = res.history
    assert "robust_loss" not in rows[0]  # plain cross-entropy, no TRADES term
    assert rows[1]["loss"] < rows[0]["loss"] - 0.01, rows  # 8 steps: the cross-entropy goes down


def test_advmoe_draws_two_different_batches_per_step():
    data = _Data(None, torch.arange(1000, 1256), torch.empty(0), torch.empty(0))  # type: ignore[arg-type]
    cfg = tiny_cfg(Path("/nonexistent"), method="advmoe", batch_size=32)
    b = _epoch_batches(data, cfg, 0, 2, DistContext())
    assert len(b) == 2 * (256 // 32)
    for s in range(0, len(b), 2):
        assert set(b[s].tolist()) != set(b[s + 1].tolist())
    # every stream is a permutation (each example once per epoch), and the order depends on the epoch
    assert sorted(torch.cat(b[0::2]).tolist()) == list(range(1000, 1256))
    assert not torch.equal(b[0], _epoch_batches(data, cfg, 1, 2, DistContext())[0])
    # two ranks split each global batch into disjoint halves
    halves = [_epoch_batches(data, cfg, 0, 2, DistContext(rank=r, world_size=2)) for r in (0, 1)]
    assert torch.equal(torch.cat([halves[0][0], halves[1][0]]), b[0])


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, needle", [
    (["--method", "nope"], "unknown training method"),
    (["--method", "at-dense", "--arch", "resnet-huge"], "unknown architecture"),
    (["--method", "at-dense", "--dataset", "mnist-9"], "unknown data set"),
    (["--method", "at-dense", "--eps", "8"], "pixel units"),
    (["--method", "at-moe", "--experts", "1"], "at least 2 experts"),
    (["--method", "at-moe", "--scale", "1.5"], "(0, 1]"),
    (["--method", "at-sdense", "--scale", "0"], "(0, 1]"),
    (["--method", "at-dense", "--experts", "4"], "--experts only apply to MoE models"),
    (["--method", "at-sdense", "--router", "shared", "--ste", "softmax"], "--router, --ste only apply to MoE"),
    (["--method", "at-dense", "--scale", "0.5"], "--scale does not apply to a Dense model"),
    (["--method", "at-moe", "--kind", "dense"], "--kind is only for --method std"),
    (["--method", "std", "--kind", "giant"], "unknown model kind"),
    (["--method", "at-moe", "--layout", "diagonal"], "unknown layout"),
    (["--method", "at-moe", "--trades-start", "zero"], "unknown TRADES start"),
    (["--method", "advmoe-public", "--router", "layer"], "needs one router network"),
])
def test_bad_input_one_line_nonzero_nothing_written(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    base = ["train", "--arch", "resnet-tiny", "--dataset", "fashion-mnist", "--out", str(out), "--quiet"]
    rc = run(base + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_eps_fraction_string_accepted():
    cfg = TrainConfig.from_dict(dict(method="at-dense", arch="resnet-tiny", dataset="cifar10", eps_str="8/255"))
    assert cfg.eps == pytest.approx(8 / 255) and cfg.eps_str == "8/255"
    assert cfg.step_size == pytest.approx(5 / 255)  # the public code: 2 steps of 5/255 at 8/255
    assert cfg.trades_start == "normal"
    with pytest.raises(ConfigError):
        TrainConfig.from_dict(dict(method="at-dense", arch="resnet-tiny", dataset="cifar10", bogus=1))


def test_at_sparse_phase_split():
    c = TrainConfig.from_dict(dict(method="at-sparse", arch="resnet-tiny", dataset="fashion-mnist", epochs=8))
    assert c.phase_epochs == [4, 2, 2]
    c = TrainConfig.from_dict(dict(method="at-sparse", arch="resnet-tiny", dataset="fashion-mnist", epochs=4,
                                   from_dense="x.pt"))
    assert c.phase_epochs == [0, 2, 2]
    with pytest.raises(ConfigError):
        TrainConfig.from_dict(dict(method="at-sparse", arch="resnet-tiny", dataset="fashion-mnist", epochs=2))


# --------------------------------------------------------------------------- a full tiny run
def test_cli_run_outputs_and_folder_refusal(tmp_path, tiny_root, capsys):
    out = tmp_path / "run"
    assert run(cli_args(tiny_root, out, "--method", "at-moe", "--eps", "0.1")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "config.json", "metrics.jsonl", "state.safetensors",
                                                     "trajectory.png"]
    meta = read_meta(out / "ckpt.pt")
    tr = meta["training"]
    assert tr["method"] == "at-moe" and tr["eps_str"] == "0.1" and tr["epochs"] == 2 and tr["train_steps"] == 2
    assert tr["beta"] == 6.0 and tr["subset"] == 256 and meta["model"]["kind"] == "moe"
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= r["pgd10_acc"] <= r["clean_acc"] <= 100 and r["seconds"] > 0 and r["loss"] > 0
        assert r["holdout"] == 102  # the CLI default (500) capped at a fifth of the 512 training images
    assert tr["final_clean_acc"] == rows[-1]["clean_acc"]
    assert (out / "trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "at-moe" and cfg["experts"] == 2 and cfg["eps"] == pytest.approx(0.1)
    assert cfg["router"] == "resnet" and cfg["layout"] == "compact" and cfg["ste"] == "identity"
    # the stored model reproduces the reported validation accuracy, measured on training images only
    loaded = load_checkpoint(out / "ckpt.pt").model
    from robustmoe_bench.data import as_tensors
    from robustmoe_bench.training import validation_split
    val, rest = validation_split(512, 500)
    assert val.numel() == 102 and rest.numel() == 410 and not set(val.tolist()) & set(rest.tolist())
    x, y = as_tensors(load_dataset("fashion-mnist", "train", tiny_root), val)
    with torch.no_grad():
        acc = 100.0 * float((loaded(x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(rows[-1]["clean_acc"], abs=1e-6)

    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert run(cli_args(tiny_root, out, "--method", "at-moe", "--eps", "0.1")) == 2
    assert "--resume" in capsys.readouterr().err
    assert run(cli_args(tiny_root, out, "--method", "at-dense")) == 2
    assert "different run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot
    # resuming a finished run trains nothing and changes no weights
    assert run(["train", "--resume", str(out), "--quiet"]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot


def test_at_sparse_from_dense_learns_masks_then_finetunes(tmp_path, tiny_root):
    dense = train(tiny_cfg(tiny_root, method="at-dense", epochs=1), tmp_path / "dense", progress=False)
    res = train(tiny_cfg(tiny_root, method="at-sparse", epochs=2, from_dense=str(dense.ckpt)), tmp_path / "sp",
                progress=False)
    assert [h["phase"] for h in res.history] == ["prune", "finetune"]
    net = load_checkpoint(res.ckpt).model
    assert net.spec.kind == "sparse"
    masks = [m.channel_mask for m in net.modules() if getattr(m, "channel_mask", None) is not None]
    assert masks
    d = load_checkpoint(dense.ckpt).model.state_dict()
    moved = 0
    for name, m in net.named_modules():
        cm = getattr(m, "channel_mask", None)
        if cm is None:
            continue
        assert int(cm.mask.sum()) == cm.keep == round(0.5 * m.out_channels)
        # the fixed mask is the top-k of the learned scores
        assert set(cm.mask.nonzero().flatten().tolist()) == set(cm.scores.topk(cm.keep).indices.tolist())
        init = d[f"{name}.weight"].flatten(1).norm(dim=1)
        moved += int(not torch.allclose(cm.scores, init / init.max()))
    assert moved > 0, "the prune phase must train the scores"


def test_at_sparse_finetune_lr_scales_only_the_finetune_schedule(tmp_path, tiny_root):
    dense = train(tiny_cfg(tiny_root, method="at-dense", epochs=1), tmp_path / "dense", progress=False)
    runs = {}
    for scale in (None, 0.1):
        cfg = tiny_cfg(tiny_root, method="at-sparse", epochs=3, from_dense=str(dense.ckpt), finetune_lr=scale)
        assert cfg.phase_epochs == [0, 1, 2]
        runs[scale] = train(cfg, tmp_path / f"sp-{scale}", progress=False).history
    full, low = runs[None], runs[0.1]
    assert [h["phase"] for h in low] == ["prune", "finetune", "finetune"]
    # the prune phase runs at the full rate and learns the same mask; the finetune cosine peaks at 0.1 x lr
    assert low[0]["lr_end"] == full[0]["lr_end"] and low[0]["clean_acc"] == full[0]["clean_acc"]
    steps = 256 // 64  # the 256-example subset in batches of 64
    mid = 0.5 * 0.05 * (1 + math.cos(math.pi * (steps - 1) / (2 * steps)))
    assert full[1]["lr_end"] == pytest.approx(mid) and low[1]["lr_end"] == pytest.approx(0.1 * mid)
    assert low[1]["clean_acc"] != full[1]["clean_acc"] or low[1]["loss"] != full[1]["loss"]
    # recorded where a reader looks, absent (old identity) where unset
    assert read_meta(tmp_path / "sp-0.1" / "ckpt.pt")["training"]["finetune_lr"] == 0.1
    assert "finetune_lr" not in read_meta(tmp_path / "sp-None" / "ckpt.pt")["training"]
    assert "finetune_lr" not in TrainConfig.from_dict(dict(method="at-sparse", arch="resnet-tiny",
                                                           dataset="fashion-mnist", epochs=4)).run_identity()
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="finetune-lr"):
            tiny_cfg(tiny_root, method="at-sparse", epochs=3, from_dense=str(dense.ckpt), finetune_lr=bad)
    with pytest.raises(ConfigError, match="only for --method at-sparse"):
        tiny_cfg(tiny_root, method="at-dense", finetune_lr=0.1)
    # the reproduce preset's recipe (pruning a trained Dense model) finetunes at 0.3x; from scratch it does not
    assert TrainConfig.from_preset("fmnist-repro", method="at-sparse", from_dense="d.pt").finetune_lr == 0.3
    assert TrainConfig.from_preset("fmnist-repro", method="at-sparse").finetune_lr is None
    assert TrainConfig.from_preset("fmnist-repro", method="at-sparse", from_dense="d.pt", finetune_lr=1.0).finetune_lr == 1.0


# --------------------------------------------------------------------------- exact resume after SIGKILL
def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path, tiny_root):
    args = ["train", "--method", "advmoe", "--arch", "resnet-tiny", "--dataset", "fashion-mnist", "--epochs", "3",
            "--batch-size", "32", "--subset", "256", "--data-root", str(tiny_root), "--device", "cpu", "--quiet"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([PY, "-m", "robustmoe_bench", *args, "--out", str(full)], env=_env(), check=True, timeout=300)
    proc = subprocess.Popen([PY, "-m", "robustmoe_bench", *args, "--out", str(killed)], env=_env())
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.time() < deadline, "run ended before its first epoch was recorded"
        time.sleep(0.02)
    time.sleep(0.1)  # into epoch 2 (an epoch takes about a second even on an idle box)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert metrics.read_text().count("\n") == 1, "the kill must land inside epoch 2"
    assert not (killed / "ckpt.pt").exists()
    subprocess.run([PY, "-m", "robustmoe_bench", "train", "--resume", str(killed), "--quiet"], env=_env(),
                   check=True, timeout=300)
    a, b = load_checkpoint(full / "ckpt.pt").model.state_dict(), load_checkpoint(killed / "ckpt.pt").model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    ra = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(l) for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [(r["loss"], r["clean_acc"], r["pgd10_acc"]) for r in ra] == [(r["loss"], r["clean_acc"], r["pgd10_acc"]) for r in rb]


# --------------------------------------------------------------------------- two processes
SITECUSTOMIZE = '''
import os
_replace = os.replace
def _logged(src, dst, *a, **k):
    log = os.environ.get("RMB_WRITE_LOG")
    if log:
        with open(f"{log}/writes-rank{os.environ.get('RANK', 'x')}.txt", "a") as f:
            f.write(str(dst) + "\\n")
    return _replace(src, dst, *a, **k)
os.replace = _logged
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_identical_weights_rank0_writes(tmp_path, tiny_root):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "ddp"
    env = {**_env(), "PYTHONPATH": f"{hook}:{REPO}", "RMB_WRITE_LOG": str(logs)}
    cmd = [TORCHRUN, "--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "robustmoe_bench", "train",
           "--method", "advmoe", "--arch", "resnet-tiny", "--dataset", "fashion-mnist", "--epochs", "2",
           "--batch-size", "64", "--subset", "256", "--data-root", str(tiny_root), "--device", "cpu", "--quiet",
           "--out", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(row["world_size"] == 2 and row["ranks_identical"] is True for row in rows)
    assert read_meta(out / "ckpt.pt")["training"]["world_size"] == 2
    assert not (logs / "writes-rank1.txt").exists(), "rank 1 wrote files"
    written = {Path(p).name for p in (logs / "writes-rank0.txt").read_text().split()}
    assert {"ckpt.pt", "config.json", "metrics.jsonl", "state.safetensors", "trajectory.png"} <= written


# --------------------------------------------------------------------------- weight average (--ema)
def test_weight_average_follows_its_decay_schedule():
    from robustmoe_bench.training.loop import WeightAverage
    net = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        net.weight.fill_(1.0)
    avg = WeightAverage(net, 0.5)
    assert [round(avg.rate(t), 4) for t in (0, 1, 8, 1000)] == [0.1, 0.1818, 0.5, 0.5]
    with torch.no_grad():
        net.weight.fill_(3.0)
        net.num_batches_tracked.fill_(7)
    avg.update(net, 0)  # 0.1 * 1 + 0.9 * 3
    assert torch.allclose(avg.model.weight, torch.full((3,), 2.8))
    with torch.no_grad():
        net.weight.fill_(-1.0)
    avg.update(net, 1)  # (2/11) * 2.8 + (9/11) * -1
    assert torch.allclose(avg.model.weight, torch.full((3,), 2 / 11 * 2.8 - 9 / 11))
    assert int(avg.model.num_batches_tracked) == 7  # integer buffers are copied, not averaged
    assert not avg.model.weight.requires_grad
    with pytest.raises(ConfigError, match="does not match"):
        WeightAverage(torch.nn.Linear(2, 2), 0.5, saved={"ema.weight": torch.zeros(2, 2)})


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1])
def test_ema_decay_must_lie_in_the_open_unit_interval(tiny_root, bad):
    with pytest.raises(ConfigError, match="--ema"):
        tiny_cfg(tiny_root, ema=bad)
    assert "ema" not in tiny_cfg(tiny_root).run_identity()  # runs from before the option keep their identity
    assert tiny_cfg(tiny_root, ema=0.99).run_identity()["ema"] == 0.99


def test_ema_outputs_the_average_and_leaves_training_unchanged(tmp_path, tiny_root):
    from robustmoe_bench.training.loop import evaluate_holdout, validation_examples
    kw = dict(method="at-moe", router="shared", epochs=2)
    plain = train(tiny_cfg(tiny_root, **kw), tmp_path / "plain", progress=False)
    cfg = tiny_cfg(tiny_root, ema=0.999, **kw)
    avg = train(cfg, tmp_path / "ema", progress=False)
    # training is the same: the last iterate equals the plain run's, weights and monitor alike
    raw = load_checkpoint(tmp_path / "ema" / "state.safetensors").model.state_dict()
    ref = load_checkpoint(plain.ckpt).model.state_dict()
    assert all(torch.equal(raw[k], ref[k]) for k in ref)
    assert [(r["raw_clean_acc"], r["raw_pgd10_acc"]) for r in avg.history] == \
        [(r["clean_acc"], r["pgd10_acc"]) for r in plain.history]
    # the checkpoint holds the average, and the monitor's figures are the average's
    out = load_checkpoint(avg.ckpt)
    w = out.model.state_dict()
    assert any(not torch.equal(w[k], ref[k]) for k in ref if w[k].is_floating_point())
    assert out.meta["training"]["ema"] == 0.999
    x, y = validation_examples(cfg)
    from robustmoe_bench.training.loop import _seed, _STREAM_EVAL
    clean, robust = evaluate_holdout(out.model, x, y, float(cfg.eps), cfg.eval_steps, _seed(cfg.seed, 1, _STREAM_EVAL))
    assert (clean, robust) == (avg.history[-1]["clean_acc"], avg.history[-1]["pgd10_acc"])
    assert "expert_use" in avg.history[-1]


def test_ema_run_resumes_to_the_same_average(tmp_path, tiny_root, monkeypatch):
    from robustmoe_bench.training import outputs as O
    cfg = dict(method="at-dense", epochs=3, ema=0.99)
    full = train(tiny_cfg(tiny_root, **cfg), tmp_path / "full", progress=False)
    real = O.write_metrics

    def stop_after_first_epoch(out, history):
        real(out, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(O, "write_metrics", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(tiny_root, **cfg), tmp_path / "cut", progress=False)
    monkeypatch.setattr(O, "write_metrics", real)
    cut = train(tiny_cfg(tiny_root, **cfg), tmp_path / "cut", progress=False, resume=True)
    a, b = load_checkpoint(full.ckpt).model.state_dict(), load_checkpoint(cut.ckpt).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run's weight average differs"
    assert [r["pgd10_acc"] for r in full.history] == [r["pgd10_acc"] for r in cut.history]


def test_the_reproduce_preset_is_the_validated_stable_setting():
    c = TrainConfig.from_preset("fmnist-repro", method="at-moe")
    assert (c.train_steps, c.step_size, c.lr, c.ema) == (5, pytest.approx(0.05), 0.05, 0.999)
    assert TrainConfig.from_preset("fmnist-repro", method="at-sparse").phase_epochs == [2, 1, 2]
    # other epochs: split by the rule, not the preset's split (which would not add up)
    assert TrainConfig.from_preset("fmnist-repro", method="at-sparse", epochs=8).phase_epochs == [4, 2, 2]
    assert TrainConfig.from_preset("fmnist-mini", method="at-moe").ema is None
