"""Model zoo: register a checkpoint with its results, load it back verified, refuse corrupt or unknown
models, never fetch without being asked."""
from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch

import robustmoe_bench
from robustmoe_bench import create_model, save_checkpoint
from robustmoe_bench.cli import run
from robustmoe_bench.errors import CheckpointError, RobustMoEError
from robustmoe_bench.zoo import (
    PACKAGED_REGISTRY,
    ZooError,
    get_zoo_model,
    load_model,
    load_zoo_checkpoint,
    register_zoo_model,
    sha256_file,
    zoo_models,
)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("resnet-tiny", kind="moe", dataset="fashion-mnist")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, model, training={"method": "advmoe", "epochs": 1})
    return path, model


def results_for(ckpt: Path, net, **over) -> dict:
    r = {
        "schema_version": 1, "suite": "full", "dataset": "fashion-mnist", "threat_model": "Linf",
        "eps": 0.1, "eps_str": "0.1", "n_examples": 100, "seed": 0, "clean_acc": 80.0,
        "robust_acc": {"pgd-50": 60.0, "autoattack": 55.0, "worst_case": 53.0},
        "flags": {}, "unreliable": False, "gflops": {"pathway": 0.001, "router": 0.00001, "total": 0.00101},
        "model": net.spec.to_dict(), "training": {"method": "advmoe"},
        "checkpoint": str(ckpt), "checkpoint_sha256": sha256_file(ckpt),
    }
    r.update(over)
    return r


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_register_and_load_back(tiny_ckpt, tmp_path, capsys):
    ckpt, model = tiny_ckpt
    collapsed = {"n_inputs": 100, "n_experts": 2, "busiest_share": [1.0, 1.0], "collapsed": True}
    res = write_json(tmp_path / "results.json", results_for(ckpt, model, expert_use=collapsed))
    zoo = tmp_path / "zoo"
    rc = run(["zoo", "add", "tiny-moe", str(ckpt), "--results", str(res), "--root", str(zoo),
              "--description", "test model"])
    assert rc == 0, capsys.readouterr().err
    assert "added tiny-moe" in capsys.readouterr().out
    # The checkpoint was copied; the registry records sha256, size, spec, training and results.
    copied = zoo / "tiny-moe.safetensors"
    assert copied.read_bytes() == ckpt.read_bytes()
    reg = json.loads((zoo / "registry.json").read_text())
    assert reg["schema_version"] == 1 and list(reg["models"]) == ["tiny-moe"]
    rec = reg["models"]["tiny-moe"]
    assert rec["sha256"] == sha256_file(ckpt) and rec["size_bytes"] == ckpt.stat().st_size
    assert rec["file"] == "tiny-moe.safetensors" and rec["url"] is None
    assert rec["model"]["kind"] == "moe" and rec["model"]["arch"] == "resnet-tiny"
    assert rec["training"] == {"epochs": 1, "method": "advmoe"}
    assert rec["results"]["robust_acc"]["autoattack"] == 55.0 and rec["description"] == "test model"

    loaded = load_model("tiny-moe", root=zoo)
    assert robustmoe_bench.load_model is load_model
    assert not loaded.training
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    x = torch.rand(4, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))

    assert run(["zoo", "list", "--root", str(zoo)]) == 0
    out = capsys.readouterr().out
    assert "tiny-moe" in out and "ok" in out and "AutoAttack 55.00%" in out
    assert "COLLAPSED" in out  # the routing health of the recorded results, marked
    assert run(["zoo", "show", "tiny-moe", "--root", str(zoo)]) == 0
    out = capsys.readouterr().out
    assert "sha256 verified" in out and "worst case 53.00%" in out and "COLLAPSED (busiest 100%)" in out
    assert run(["zoo", "show", "tiny-moe", "--root", str(zoo), "--json"]) == 0
    cap = capsys.readouterr()
    shown = json.loads(cap.out)
    assert shown["name"] == "tiny-moe" and shown["sha256"] == rec["sha256"] and "sha256 verified" in cap.err


def test_headline_reports_autoattack_alone_where_recorded(tiny_ckpt, tmp_path, capsys):
    """In a suite whose router attacks run before AutoAttack, robust_acc["autoattack"] is the cascade's
    cumulative figure (here 53 %, the worst case); the zoo reports AutoAttack alone (57 %), as the
    leaderboard does."""
    ckpt, model = tiny_ckpt
    res = write_json(tmp_path / "results.json", results_for(
        ckpt, model, robust_acc={"pgd-50": 60.0, "router-untargeted": 54.0, "autoattack": 53.0, "worst_case": 53.0},
        robust_acc_alone={"pgd-50": 60.0, "router-untargeted": 58.0, "autoattack": 57.0}))
    zoo = tmp_path / "zoo"
    assert run(["zoo", "add", "tiny-moe", str(ckpt), "--results", str(res), "--root", str(zoo)]) == 0
    out = capsys.readouterr().out
    assert "AutoAttack 57.00%, worst case 53.00%" in out and "AutoAttack 53.00%" not in out


def test_corrupt_weights_fail_before_loading(tiny_ckpt, tmp_path, capsys):
    ckpt, _ = tiny_ckpt
    zoo = tmp_path / "zoo"
    m = register_zoo_model("tiny", ckpt, root=zoo)
    f = zoo / "tiny.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight: still a parseable safetensors file
    f.write_bytes(bytes(data))
    actual = sha256_file(f)
    with pytest.raises(CheckpointError) as ei:
        load_model("tiny", root=zoo)
    msg = str(ei.value)
    assert "sha256 mismatch" in msg and m.sha256 in msg and actual in msg
    assert run(["zoo", "show", "tiny", "--root", str(zoo)]) == 2
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and "Traceback" not in err
    assert run(["zoo", "list", "--root", str(zoo)]) == 2
    cap = capsys.readouterr()
    assert "MISMATCH" in cap.out and "failed sha256 verification: tiny" in cap.err
    f.unlink()
    with pytest.raises(ZooError, match="not found"):
        load_model("tiny", root=zoo)


def test_unknown_name_lists_known_names(tiny_ckpt, tmp_path, capsys):
    ckpt, _ = tiny_ckpt
    zoo = tmp_path / "zoo"
    register_zoo_model("alpha", ckpt, root=zoo)
    register_zoo_model("beta", ckpt, root=zoo)
    with pytest.raises(ZooError, match=r"unknown zoo model 'gamma'; known: alpha, beta"):
        load_model("gamma", root=zoo)
    assert run(["zoo", "show", "gamma", "--root", str(zoo)]) == 2
    assert "known: alpha, beta" in capsys.readouterr().err
    with pytest.raises(ZooError, match="the zoo is empty"):
        get_zoo_model("x", root=tmp_path / "empty")


def test_refusals(tiny_ckpt, tmp_path):
    ckpt, model = tiny_ckpt
    zoo = tmp_path / "zoo"
    register_zoo_model("m", ckpt, root=zoo)
    with pytest.raises(ZooError, match="already exists"):
        register_zoo_model("m", ckpt, root=zoo)
    register_zoo_model("m", ckpt, root=zoo, force=True, description="again")
    assert get_zoo_model("m", root=zoo).description == "again"
    for bad in ("../evil", "a/b", ".x", ""):
        with pytest.raises(RobustMoEError, match="invalid zoo model name"):
            register_zoo_model(bad, ckpt, root=zoo)
    # Results computed on another checkpoint, or about another model, are refused.
    other = write_json(tmp_path / "r1.json", results_for(ckpt, model, checkpoint_sha256="0" * 64))
    with pytest.raises(ZooError, match="different checkpoint"):
        register_zoo_model("n", ckpt, other, root=zoo)
    spec = dict(model.spec.to_dict(), experts=4)
    other = write_json(tmp_path / "r2.json", results_for(ckpt, model, model=spec))
    with pytest.raises(ZooError, match="different model"):
        register_zoo_model("n", ckpt, other, root=zoo)
    # Not a checkpoint.
    pkl = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, pkl)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        register_zoo_model("n", pkl, root=zoo)
    assert sorted(p.name for p in zoo.iterdir()) == ["m.safetensors", "registry.json"]
    assert [m.name for m in zoo_models(zoo)] == ["m"]


def test_url_models_are_fetched_only_when_asked(tiny_ckpt, tmp_path, monkeypatch, capsys):
    ckpt, model = tiny_ckpt
    monkeypatch.setenv("ROBUSTMOE_CACHE", str(tmp_path / "cache"))
    hosted = tmp_path / "hosted.safetensors"
    hosted.write_bytes(ckpt.read_bytes())
    zoo = tmp_path / "zoo"
    register_zoo_model("remote", ckpt, root=zoo, url=hosted.as_uri())
    assert not (zoo / "remote.safetensors").exists()
    with pytest.raises(ZooError, match="not downloaded.*download=True"):
        load_model("remote", root=zoo)
    assert run(["zoo", "show", "remote", "--root", str(zoo)]) == 2
    assert "--download" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
    # A tampered download is discarded, not cached.
    data = bytearray(hosted.read_bytes())
    data[-1] ^= 0x01
    hosted.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="download was discarded"):
        load_model("remote", root=zoo, download=True)
    assert list((tmp_path / "cache" / "zoo").iterdir()) == []
    hosted.write_bytes(ckpt.read_bytes())
    assert run(["zoo", "show", "remote", "--root", str(zoo), "--download"]) == 0
    loaded = load_model("remote", root=zoo)  # now cached: no download needed
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_zoo_env_and_packaged_registry(tiny_ckpt, tmp_path, monkeypatch):
    ckpt, _ = tiny_ckpt
    monkeypatch.delenv("ROBUSTMOE_ZOO", raising=False)
    # The packaged registry parses (whatever models it ships).
    packaged = json.loads(PACKAGED_REGISTRY.read_text())
    assert packaged["schema_version"] == 1
    assert [m.name for m in zoo_models()] == sorted(packaged["models"])
    monkeypatch.setenv("ROBUSTMOE_ZOO", str(tmp_path / "envzoo"))
    register_zoo_model("via-env", ckpt)
    assert (tmp_path / "envzoo" / "via-env.safetensors").is_file()
    assert load_zoo_checkpoint("via-env").training["method"] == "advmoe"
    assert json.loads(PACKAGED_REGISTRY.read_text()) == packaged


def test_corrupt_registry_is_a_clear_error(tmp_path, capsys):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "registry.json").write_text("{oops")
    assert run(["zoo", "list", "--root", str(zoo)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (zoo / "registry.json").write_text(json.dumps({"schema_version": 1, "models": {
        "x": {"sha256": "0" * 64, "size_bytes": 1, "model": {}, "file": "../../etc/x.safetensors"}}}))
    with pytest.raises(ZooError, match="invalid weight file name"):
        zoo_models(zoo)


def _add_worker(ckpt, zoo, name, barrier, queue):
    barrier.wait(timeout=30)
    try:
        register_zoo_model(name, ckpt, root=zoo)
        queue.put("ok")
    except Exception as e:  # noqa: BLE001 -- reported to the parent
        queue.put(f"{type(e).__name__}: {e}")


def test_concurrent_adds_lose_no_model(tiny_ckpt, tmp_path):
    ckpt, _ = tiny_ckpt
    zoo = tmp_path / "zoo"
    # spawn, not fork: a forked child that runs torch after the parent's OpenMP pool started can stall
    # for minutes on a loaded machine (libgomp is not fork-safe); that timed the test out under load.
    ctx = mp.get_context("spawn")
    names = [f"m{i}" for i in range(4)]
    barrier, queue = ctx.Barrier(len(names)), ctx.Queue()
    procs = [ctx.Process(target=_add_worker, args=(ckpt, zoo, n, barrier, queue)) for n in names]
    for p in procs:
        p.start()
    out = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert out == ["ok"] * 4
    assert [m.name for m in zoo_models(zoo)] == names
    for n in names:
        assert load_model(n, root=zoo) is not None


def test_refresh_script_publishes_a_sweep_of_topk_designs(tmp_path):
    """model_zoo/refresh.sh on a real (tiny) sweep folder: the cell's evaluation is reused (same suite
    and n), the corruption suite runs, and the cell becomes zoo model fmnist-<method>-<cell> with a
    leaderboard entry that carries corruptions_acc — in the zoo and leaderboard folders given, not ours."""
    import os
    import subprocess
    import sys

    from test_dissect import write_fmnist

    repo = Path(__file__).resolve().parents[1]
    write_fmnist(tmp_path / "data" / "fashion-mnist", n_test=8, n_train=16)
    sweep = tmp_path / "sweep"
    argv = ["sweep", "--design", "conv", "--experts", "2", "--k", "2", "--method", "at-moe", "--preset", "fmnist-mini",
            "--arch", "resnet-tiny", "--epochs", "1", "--subset", "8", "--batch-size", "8", "--set", "holdout=4",
            "--set", "eval_steps=1", "--set", "train_steps=1", "--suite", "standard", "--n-examples", "4",
            "--data-root", str(tmp_path / "data" / "fashion-mnist"), "--out", str(sweep), "--no-dense"]
    assert run(argv) == 0
    cell_eval = json.loads((sweep / "cells" / "conv_N2_k2" / "eval.json").read_text())
    assert cell_eval["expert_use"]["n_inputs"] == 4
    # as written before evaluations recorded the routing health: the script measures it on the same examples
    older = {k: v for k, v in cell_eval.items() if k != "expert_use"}
    (sweep / "cells" / "conv_N2_k2" / "eval.json").write_text(json.dumps(older))
    env = dict(os.environ, BIN=str(Path(sys.executable).parent), ROBUSTMOE_ZOO=str(tmp_path / "zoo"),
               ROBUSTMOE_DATA=str(tmp_path / "data"), CORRUPTIONS="1", OMP_NUM_THREADS="1")
    (tmp_path / "zoo").mkdir()
    proc = subprocess.run(["bash", str(repo / "model_zoo" / "refresh.sh"), str(sweep), "4", "standard"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = sweep / "zoo-eval-standard-4"
    # reused, not re-run; the expert use measured afterwards equals what the evaluation had recorded
    assert json.loads((res / "fmnist-at-moe-conv-n2-k2.json").read_text()) == cell_eval
    assert "expert use measured on its 4 evaluated examples" in proc.stdout
    assert "expert_use" not in json.loads((sweep / "cells" / "conv_N2_k2" / "eval.json").read_text())
    corr = json.loads((res / "fmnist-at-moe-conv-n2-k2-corruptions.json").read_text())
    assert corr["n_examples"] == 4 and len(corr["accuracy"]) == 15
    entry = json.loads((tmp_path / "leaderboards" / "fashion-mnist" / "Linf"
                        / "robustmoe-fmnist-at-moe-conv-n2-k2.json").read_text())
    assert entry["corruptions_acc"] == f"{corr['corruptions_acc']:.2f}"
    assert entry["clean_acc"] == f"{cell_eval['clean_acc']:.2f}"
    assert entry["robustmoe_expert_use"]["busiest_share"] == cell_eval["expert_use"]["busiest_share"]
    rec = get_zoo_model("fmnist-at-moe-conv-n2-k2", root=tmp_path / "zoo")
    assert rec.model["moe"] == "conv" and rec.model["k"] == 2 and rec.results == cell_eval
    assert "conv MoE, top-2 of 2 experts" in rec.description
    assert (tmp_path / "leaderboards" / "README.md").is_file()
