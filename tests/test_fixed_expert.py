"""Fixed-expert evaluation: each forced expert is exactly the Dense network holding that expert's
weights (clean and PGD numbers agree with that network evaluated directly), the gated row is the model
itself, and the CLI reports it with clear errors for models without experts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers_topk import train_topk
from robustmoe_bench.analysis.fixed_expert import fixed_expert_eval
from robustmoe_bench.attacks import create_attack
from robustmoe_bench.checkpoint import load_checkpoint, save_checkpoint
from robustmoe_bench.cli import run
from robustmoe_bench.data import as_tensors, load_dataset, subset_indices
from robustmoe_bench.models import create_model


@pytest.fixture(scope="module")
def conv_top2(tmp_path_factory) -> dict[str, Path]:
    return train_topk(tmp_path_factory.mktemp("fx-conv"), moe="conv", k=2, experts=3, steps=100)


def _dense_copy(moe_model, e: int):
    """resnet-tiny Dense whose MoE convs are expert ``e``'s convs (batch norm not folded, as in the MoE)."""
    dense = create_model("resnet-tiny", "dense", dataset="fashion-mnist")
    sd = {}
    for k, v in moe_model.state_dict().items():
        if ".router." in k:
            continue
        if k.endswith(".weight") and v.dim() == 5:  # [N, C_out, C_in, k, k]: the expert's conv
            v = v[e]
        sd[k] = v
    dense.load_state_dict(sd)
    dense.fold_bn = False
    return dense.eval()


def test_each_forced_expert_is_the_dense_network_with_its_weights(conv_top2):
    res = fixed_expert_eval(str(conv_top2["ckpt"]), n_examples=60, steps=5, data_root=conv_top2["root"], batch_size=30)
    assert [r.label for r in res.rows] == ["gated", "expert 0", "expert 1", "expert 2"] and res.attack == "pgd-5"
    model = load_checkpoint(conv_top2["ckpt"]).model
    test = load_dataset("fashion-mnist", "test", root=conv_top2["root"])
    x, y = as_tensors(test, subset_indices(len(test), 60, 0))
    atk = create_attack("pgd", 0.1, steps=5, seed=0)
    for e in range(3):
        dense = _dense_copy(model, e)
        clean, robust = 0, 0
        for s in (0, 30):
            xb, yb = x[s:s + 30], y[s:s + 30]
            with torch.no_grad():
                ok = dense(xb).argmax(1) == yb
            clean += int(ok.sum())
            xa = atk(dense, xb[ok], yb[ok])
            with torch.no_grad():
                robust += int((dense(xa).argmax(1) == yb[ok]).sum())
        row = res.rows[e + 1]
        assert row.clean_acc == pytest.approx(100 * clean / 60) and row.robust_acc == pytest.approx(100 * robust / 60)
    with torch.no_grad():
        gated = 100 * float((model(x).argmax(1) == y).double().mean())
    assert res.gated.clean_acc == pytest.approx(gated) and gated > 50
    for r in res.rows:
        assert r.robust_acc <= r.clean_acc and r.clean_ci[0] <= r.clean_acc <= r.clean_ci[1]
    # the experts differ: not every forced expert gives the same clean accuracy as the others
    assert len({round(r.clean_acc, 2) for r in res.experts()}) > 1


def test_cli_fixed_experts(conv_top2, tmp_path, capsys):
    out = tmp_path / "fx.json"
    assert run(["fixed-experts", str(conv_top2["ckpt"]), "-n", "20", "--steps", "2", "--data-root",
                str(conv_top2["root"]), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["label"] for r in data["rows"]] == ["gated", "expert 0", "expert 1", "expert 2"]
    assert "expert 2" in capsys.readouterr().out
    dense = tmp_path / "dense.safetensors"
    save_checkpoint(dense, create_model("resnet-tiny", "dense", dataset="fashion-mnist"), training={})
    bad = tmp_path / "bad.json"
    assert run(["fixed-experts", str(dense), "-n", "10", "--data-root", str(conv_top2["root"]), "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "needs an MoE model" in err and "Traceback" not in err and not bad.exists()
    assert run(["fixed-experts", str(conv_top2["ckpt"]), "--steps", "0", "--data-root", str(conv_top2["root"])]) == 2
    assert "--steps must be a positive integer" in capsys.readouterr().err
