"""``reproduce``: seeds aggregated as mean +- std, the paper's claims judged with the stated rule, and a
tiny end-to-end run through the CLI that resumes instead of retraining."""
from __future__ import annotations

import json

import pytest

from robustmoe_bench.cli import run
from robustmoe_bench.errors import ConfigError
from robustmoe_bench.reproduce import ReproduceConfig, aggregate, judge, render_markdown
from helpers_data import write_fmnist_subset


def _res(clean: float, pgd: float, worst: float, gflops: float, n: int = 1000, seed: int = 0) -> dict:
    return {"n_examples": n, "clean_acc": clean, "robust_acc": {"pgd-50-paper": pgd, "worst_case": worst},
            "gflops": {"total": gflops}, "training": {"seed": seed}}


def test_aggregate_and_claims_follow_the_stated_rule():
    results = {
        "at-dense": [_res(80, 50, 48, 1.0), _res(82, 52, 50, 1.0, seed=1)],
        "at-sdense": [_res(76, 46, 44, 0.25), _res(76, 46, 44, 0.25)],
        "at-moe": [_res(70, 40, 40, 0.5), _res(74, 44, 42, 0.5)],
        "advmoe": [_res(78, 50, 47, 0.5), _res(80, 52, 49, 0.5)],
    }
    stats = aggregate(results)
    d = stats["at-dense"]
    assert d.clean_mean == 81 and d.clean_std == pytest.approx(2 ** 0.5) and d.ra_mean == 49
    assert d.per_attack["pgd-50-paper"][0] == 51 and stats["at-sdense"].ra_std == 0
    claims = {c.key: c for c in judge(stats)}
    c = claims["advmoe-beats-at-moe"]  # 48 vs 41, stds 1.41 + 1.41
    assert c.held and c.diff == 7 and c.spread == pytest.approx(2.8284, abs=1e-4) and c.exceeds_spread
    c = claims["at-moe-below-at-sdense"]  # 44 vs 41
    assert c.held and c.diff == 3 and c.exceeds_spread  # 3 > 1.41 + 0
    c = claims["advmoe-vs-at-dense"]  # 48 vs 49: did not hold, within the spread
    assert not c.held and c.diff == -1 and not c.exceeds_spread and "0.5 vs 1 GFLOPs" in c.text
    assert "did NOT hold" in c.line() and "does not exceed" in c.line()
    md = render_markdown(stats, list(claims.values()), dict(preset="p", suite="paper", seeds=[0, 1], n_examples=1000,
                                                            eval_seed=0, seconds=1.0, command="x",
                                                            eval_seconds=1234.4))
    assert "| AT (Dense) | 1 | 81.00 +- 1.41 | 51.00 +- 1.41 | 49.00 +- 1.41 |" in md
    assert "| AT (Dense) | 80.0 / 48.0 | 82.0 / 50.0 |" in md
    assert "last invocation took 1 s" in md and "The 8 evaluations took 1234 s in all." in md


def test_bad_configs_are_clear_errors():
    with pytest.raises(ConfigError, match="at least two different seeds"):
        ReproduceConfig(seeds=(0,)).validate()
    with pytest.raises(ConfigError, match="claims need the methods advmoe"):
        ReproduceConfig(methods=("at-dense", "at-sdense", "at-moe")).validate()
    with pytest.raises(ConfigError, match="unknown preset"):
        ReproduceConfig(preset="nope").validate()
    with pytest.raises(ConfigError, match="different numbers of examples"):
        aggregate({"at-dense": [_res(1, 1, 1, 1, n=10), _res(1, 1, 1, 1, n=20)]})


def test_cli_bad_seeds_one_line(tmp_path, capsys):
    assert run(["reproduce", "--seeds", "0,x", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert "comma-separated integers" in err and len(err.splitlines()) == 1 and not (tmp_path / "t").exists()


def test_tiny_reproduction_end_to_end_and_resume(tmp_path, capsys):
    (tmp_path / "fm").mkdir()
    root = write_fmnist_subset(tmp_path / "fm", 320, 48)
    out = tmp_path / "t1"
    args = ["reproduce", "--out", str(out), "--preset", "fmnist-tiny", "--seeds", "0,1", "--suite", "quick",
            "--n-examples", "16", "--methods", "at-dense,at-sdense,at-moe,advmoe", "--data-root", str(root),
            "--workers", "1"]
    assert run(args) == 0
    doc = json.loads((out / "table1.json").read_text())
    assert sorted(doc["methods"]) == ["advmoe", "at-dense", "at-moe", "at-sdense"]
    for m, s in doc["methods"].items():
        runs = [json.loads((out / f"seed-{k}" / "results" / f"{m}.json").read_text()) for k in (0, 1)]
        assert [r["training"]["seed"] for r in runs] == [0, 1] and s["n_examples"] == 16
        assert s["ra_mean"] == pytest.approx(sum(r["robust_acc"]["worst_case"] for r in runs) / 2)
        assert s["clean_mean"] == pytest.approx(sum(r["clean_acc"] for r in runs) / 2)
    # every seed was evaluated on the same test examples
    a, b = (json.loads((out / f"seed-{k}" / "results" / "at-dense.json").read_text()) for k in (0, 1))
    assert a["seed"] == b["seed"] == 0
    assert [c["key"] for c in doc["claims"]] == ["advmoe-beats-at-moe", "at-moe-below-at-sdense", "advmoe-vs-at-dense"]
    md = (out / "table1.md").read_text()
    assert "## The paper's claims" in md and md.count("**held**") + md.count("**did NOT hold**") == 3
    assert not (out / "seed-0" / "dissect").exists() and not (out / "seed-0" / "leaderboards").exists()
    # a second run reuses every model and evaluation: the same table
    ckpt = out / "seed-1" / "models" / "advmoe" / "ckpt.pt"
    mtime = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    assert run(args) == 0
    assert ckpt.stat().st_mtime_ns == mtime and "reusing finished run" in capsys.readouterr().out
    assert json.loads((out / "table1.json").read_text())["methods"] == doc["methods"]


def test_expert_use_tells_a_collapsed_router_from_a_working_one():
    """A router that splits the inputs is not collapsed (busiest expert near 1/2 of N = 2); the same model
    with its router's scores made constant sends every input to one expert and is marked collapsed; a
    model without routing has no expert use."""
    import torch
    from helpers_models import make_diverse_routing_moe

    from robustmoe_bench.models import create_model
    from robustmoe_bench.reproduce import expert_use_of

    model, x, _ = make_diverse_routing_moe(n=64)
    use = expert_use_of(model, x, batch_size=16)
    assert use["n_experts"] == 2 and use["n_inputs"] == 64 and not use["collapsed"]
    assert all(0.5 <= b <= 0.7 for b in use["busiest_share"]) and min(use["entropy_normalised"]) > 0.85
    with torch.no_grad():
        model.router.fc.weight.zero_()
        model.router.fc.bias.copy_(torch.tensor([0.0, 3.0]))
    use = expert_use_of(model, x)
    assert use["collapsed"] and use["busiest_share"] == [1.0] * len(use["busiest_share"])
    assert use["entropy_normalised"] == [0.0] * len(use["busiest_share"])
    assert "-0.0" not in str(use["entropy_normalised"])
    assert expert_use_of(create_model("resnet-tiny", kind="sdense", dataset="fashion-mnist").eval(), x) is None


def test_table1_md_shows_a_dash_where_a_method_did_not_run_an_attack():
    """The table1 suite runs router attacks on MoEs only: their columns read "-" for the dense methods, and
    the attack columns keep the suite's cascade order."""
    def res(seed: int, moe: bool) -> dict:
        r = _res(80, 50, 40, 1.0, seed=seed)
        r["robust_acc"] = ({"pgd-50": 50.0 + seed} | ({"joint": 45.0 + seed} if moe else {})
                           | {"autoattack": 40.0 + seed, "worst_case": 40.0 + seed})
        return r

    results = {m: [res(0, m in ("at-moe", "advmoe")), res(2, m in ("at-moe", "advmoe"))]
               for m in ("at-dense", "at-sdense", "at-moe", "advmoe")}
    stats = aggregate(results)
    assert list(stats["at-moe"].per_attack) == ["pgd-50", "joint", "autoattack"]
    md = render_markdown(stats, judge(stats), dict(preset="p", suite="table1", seeds=[0, 2], n_examples=1000,
                                                   eval_seed=0, seconds=1.0, command="x"))
    assert "| method | GFLOPs | SA | pgd-50 | autoattack | joint | RA |" not in md
    assert "| method | GFLOPs | SA | pgd-50 | joint | autoattack | RA |" in md
    assert "| AT (Dense) | 1 | 80.00 +- 0.00 | 51.00 +- 1.41 | - | 41.00 +- 1.41 | 41.00 +- 1.41 |" in md
    assert "| AT (MoE) | 1 | 80.00 +- 0.00 | 51.00 +- 1.41 | 46.00 +- 1.41 | 41.00 +- 1.41 | 41.00 +- 1.41 |" in md


def test_table1_md_marks_collapsed_moe_models():
    results = {m: [_res(80, 50, 48, 1.0), _res(82, 52, 50, 1.0, seed=1)]
               for m in ("at-dense", "at-sdense", "at-moe", "advmoe")}
    stats = aggregate(results)
    for m, shares in (("at-moe", (1.0, 0.55)), ("advmoe", (1.0, 1.0))):
        for one, b in zip(stats[m].runs, shares):
            one["expert_use"] = {"n_inputs": 1000, "n_experts": 2, "busiest_share": [b, b],
                                 "entropy_normalised": [0.0, 0.0], "collapsed": b >= 0.99}
    md = render_markdown(stats, judge(stats), dict(preset="p", suite="paper", seeds=[0, 1], n_examples=1000,
                                                   eval_seed=0, seconds=1.0, command="x"))
    assert "| AT (MoE) | 100.0 % of N=2 (collapsed) | 55.0 % of N=2 |" in md
    assert "| AdvMoE | 100.0 % of N=2 (collapsed) | 100.0 % of N=2 (collapsed) |" in md
    assert "**3 of 4 MoE models route (almost) every input to one expert**" in md
    assert "| AT (Dense) | 80.0 / 48.0 | 82.0 / 50.0 |" in md and "| AT (Dense) | -" not in md


def test_claims_carry_a_paired_test_per_seed_and_the_table_shows_router_robustness():
    """Per seed, the two models' worst-case outcomes on the same examples give the discordant counts and the
    exact McNemar p-value; a seed evaluated on other examples is not paired; MoE rows show each router
    attack's robustness, marked where the router collapsed."""
    def res(worst: str, seed: int, sha: str = "s", rr=None) -> dict:
        r = _res(80, 50, 100 * worst.count("1") / len(worst), 1.0, n=len(worst), seed=seed)
        r["examples"] = {"worst_case": worst, "indices_sha256": sha}
        r["router_robustness"] = rr
        return r

    a0, b0 = "1" * 30 + "0" * 10, "1" * 18 + "0" * 22  # 12 examples robust for a only, none for b only
    a1, b1 = "1" * 20 + "0" * 20, "1" * 19 + "0" * 20 + "1"  # 1 vs 1
    rr = {"router-untargeted": 71.5, "router-targeted-e0": 80.0, "router-targeted-e1": 88.25}
    results = {"at-dense": [res(a0, 0), res(a1, 1)], "at-sdense": [res(a0, 0), res(a1, 1)],
               "advmoe": [res(a0, 0, rr=rr), res(a1, 1, rr=rr)], "at-moe": [res(b0, 0, rr=rr), res(b1, 1, sha="other", rr=rr)]}
    stats = aggregate(results)
    claims = {c.key: c for c in judge(stats)}
    p = claims["advmoe-beats-at-moe"].paired
    assert len(p) == 1 and p[0]["seed"] == 0  # seed 1 was evaluated on other examples: not paired
    assert (p[0]["only_a"], p[0]["only_b"], p[0]["diff"]) == (12, 0, 30.0)
    assert p[0]["p_value"] == pytest.approx(2 / 2 ** 12)
    assert "significantly ahead (p < 0.05) on 1 of 1 seeds" in claims["advmoe-beats-at-moe"].line()
    q = claims["advmoe-vs-at-dense"].paired
    assert [(x["only_a"], x["only_b"], x["p_value"]) for x in q] == [(0, 0, 1.0), (0, 0, 1.0)]
    stats["at-moe"].runs[0]["expert_use"] = {"n_inputs": 40, "n_experts": 2, "busiest_share": [1.0],
                                             "entropy_normalised": [0.0], "collapsed": True}
    md = render_markdown(stats, list(claims.values()), dict(preset="p", suite="table1", seeds=[0, 1], n_examples=40,
                                                            eval_seed=0, seconds=1.0, command="x"))
    assert "| AT (MoE) | targeted-e0 80.0, targeted-e1 88.2, untargeted 71.5 (collapsed router) | targeted-e0 80.0" in md
    assert "| AdvMoE | targeted-e0 80.0, targeted-e1 88.2, untargeted 71.5 | " in md
    assert "| AT (Dense) | targeted" not in md
