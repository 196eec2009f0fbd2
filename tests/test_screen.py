"""The screening suite: AutoAttack's APGD-CE and its APGD-T on the 3 smallest-margin targets, reported as
an estimate that the leaderboard and the zoo refuse."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustmoe_bench.attacks import create_attack
from robustmoe_bench.checkpoint import load_checkpoint
from robustmoe_bench.data import as_tensors, load_dataset, subset_indices
from robustmoe_bench.evaluation import evaluate
from robustmoe_bench.evaluation.state import str_to_mask
from robustmoe_bench.evaluation.suites import batch_attack_seed

ZOO = Path(__file__).resolve().parents[1] / "model_zoo"
CKPT = ZOO / "fmnist-at-dense.safetensors"
EPS = 0.1


def _fooled(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1).ne(y)


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    from helpers_data import write_fmnist_subset

    root = write_fmnist_subset(tmp_path_factory.mktemp("fmnist"), n_train=16, n_test=40)
    out = tmp_path_factory.mktemp("screen") / "r.json"
    torch.set_num_threads(1)
    res = evaluate(CKPT, suite="screen", n_examples=40, eps=EPS, seed=3, batch_size=40, data_root=root,
                   progress=False, out=out)
    return res, root, out


def test_screen_equals_its_two_reference_attacks_per_example(screened):
    """The estimate is APGD-CE on every clean-correct example, then APGD-T (standard settings, 3 targets)
    on those APGD-CE left: the same per-example outcome as pyautoattack's own attacks run so."""
    res, root, _ = screened
    model = load_checkpoint(CKPT).model.eval()
    test = load_dataset("fashion-mnist", "test", root=root)
    x, y = as_tensors(test, subset_indices(len(test), 40, 3))
    with torch.no_grad():
        clean = model(x).argmax(1).eq(y)
    idx = clean.nonzero().flatten()
    ce = create_attack("apgd-ce", EPS, seed=batch_attack_seed(3, 0, 0), engine="reference")
    fooled = torch.zeros_like(clean)
    fooled[idx] = _fooled(model, ce(model, x[idx], y[idx]), y[idx])
    rest = (clean & ~fooled).nonzero().flatten()
    t3 = create_attack("apgd-t", EPS, seed=batch_attack_seed(3, 0, 1), n_target_classes=3, engine="reference")
    fooled[rest] |= _fooled(model, t3(model, x[rest], y[rest]), y[rest])
    robust = clean & ~fooled
    assert res.estimate and res.suite == "screen"
    assert "autoattack" not in res.robust_acc and "autoattack" not in res.examples
    assert str_to_mask(res.examples["autoattack-estimate"]).tolist() == robust.tolist()
    assert res.robust_acc_alone["autoattack-estimate"] == pytest.approx(100 * int(robust.sum()) / 40, abs=1e-4)
    assert res.worst_case == res.robust_acc_alone["autoattack-estimate"]
    assert 0 < int(fooled.sum()) < int(clean.sum())  # the attacks broke some examples and not others
    params = {a.name: a.params for a in res.attacks}
    assert params["apgd-t-top3"]["n_target_classes"] == 3 and not res.flags  # no checks run


def test_screen_fooled_set_is_inside_autoattacks_under_the_same_seed():
    """With one seed for all, AutoAttack's cascade runs the screen's two attacks first (APGD-T's first 3
    targets are the same runs), so an example the screen breaks AutoAttack breaks too: the estimate can
    only be too high, never too low. Few iterations/queries (the CPU budget of a default test run)."""
    model = load_checkpoint(CKPT).model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    test = load_dataset("fashion-mnist", "test")
    x, y = as_tensors(test, subset_indices(len(test), 40, 5))
    small = {"n_iter": 10, "seed": 11, "engine": "reference"}
    with torch.no_grad():
        clean = model(x).argmax(1).eq(y)
    x, y = x[clean], y[clean]
    aa = _fooled(model, create_attack("autoattack", EPS, n_target_classes=9, n_queries=200, **small)(model, x, y), y)
    ce = _fooled(model, create_attack("apgd-ce", EPS, **small)(model, x, y), y)
    rest = (~ce).nonzero().flatten()
    screen = ce.clone()
    screen[rest] = _fooled(model, create_attack("apgd-t", EPS, n_target_classes=3, **small)(model, x[rest], y[rest]),
                           y[rest])
    assert 0 < int(screen.sum()) < len(y)
    assert bool((screen & ~aa).sum() == 0)  # screen-fooled implies AutoAttack-fooled
    assert int(aa.sum()) >= int(screen.sum())


def test_leaderboard_and_zoo_refuse_an_estimate(screened, tmp_path, capsys):
    from robustmoe_bench.cli import run
    from robustmoe_bench.leaderboard import LeaderboardError
    from robustmoe_bench.leaderboard.entry import entry_from_results
    from robustmoe_bench.zoo import ZooError, register_zoo_model

    _, _, out = screened
    results = json.loads(out.read_text())
    assert results["estimate"] is True
    with pytest.raises(LeaderboardError, match="estimate of AutoAttack"):
        entry_from_results(results, title="x")
    with pytest.raises(ZooError, match="estimate"):
        register_zoo_model("screened", CKPT, out, root=tmp_path / "zoo")
    assert not (tmp_path / "zoo" / "screened.safetensors").exists()
    capsys.readouterr()
    rc = run(["leaderboard", "publish", str(out), "--name", "screened", "--root", str(tmp_path / "lb")])
    _, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line]
    assert rc != 0 and len(lines) == 1 and "estimate" in lines[0]
    assert not (tmp_path / "lb").exists() or not any((tmp_path / "lb").rglob("*.json"))
