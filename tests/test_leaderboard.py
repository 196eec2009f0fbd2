"""Leaderboard entries: RobustBench format, honest numbers, safe and race-free publication,
validation against the shipped schema, ranked tables, compatibility with RobustBench's reader."""
from __future__ import annotations

import copy
import json
import multiprocessing as mp
from pathlib import Path

import pytest

from robustmoe_bench.cli import run
from robustmoe_bench.leaderboard import (
    LeaderboardError,
    build,
    entry_from_results,
    entry_problems,
    load_board,
    publish_results,
    validate_root,
)

FIXTURE = Path(__file__).parent / "fixtures" / "robustbench_entry_cifar10_linf.json"

# RobustBench's key order in model_info/<dataset>/<threat_model>/*.json.
RB_KEYS = [
    "link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
    "architecture", "eps", "clean_acc", "reported", "autoattack_acc",
]


def make_results(**over) -> dict:
    """Evaluation results as ``robustmoe-bench evaluate --out`` writes them (docs/DEVELOPING.md)."""
    r = {
        "schema_version": 1, "suite": "full", "dataset": "cifar10", "threat_model": "Linf",
        "eps": 8 / 255, "eps_str": "8/255", "n_examples": 500, "seed": 0,
        "clean_acc": 85.2,
        "robust_acc": {"pgd-50": 60.1, "apgd-ce": 58.0, "apgd-t": 57.5, "fab-t": 57.5, "square": 57.4,
                       "autoattack": 57.4, "router-pgd": 56.0, "worst_case": 54.2},
        "attacks": [],
        "routing": {"pgd-50": 12.5},
        "router_robustness": {"pgd-50": 87.5},
        "flags": {"eps_increase": {"passed": True, "evidence": "-"},
                  "square_vs_whitebox": {"passed": True, "evidence": "-"},
                  "zero_gradients": {"passed": True, "evidence": "-"},
                  "deterministic_routing": {"passed": True, "evidence": "-"}},
        "unreliable": False,
        "gflops": {"pathway": 0.27, "router": 0.0001, "total": 0.2701},
        "seconds": 12.0,
        "model": {"arch": "resnet18", "kind": "moe", "experts": 2, "scale": 0.5, "router": "layer",
                  "dataset": "cifar10", "num_classes": 10, "input_shape": [3, 32, 32]},
        "training": {"method": "advmoe", "epochs": 100},
        "checkpoint": "x.safetensors", "checkpoint_sha256": "a" * 64, "package_version": "0.1.0",
    }
    for k, v in over.items():
        r[k] = v
    return r


def write_results(tmp_path: Path, name: str = "results.json", **over) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(make_results(**over)))
    return p


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- format --------------------------------------------------------------------------------------

def test_publish_writes_robustbench_format(tmp_path):
    res = write_results(tmp_path)
    root = tmp_path / "lb"
    rc = run(["leaderboard", "publish", str(res), "--name", "AdvMoE_R18", "--root", str(root),
              "--title", "Robust MoE Training for CNNs", "--authors", "A, B", "--venue", "ICCV 2023",
              "--link", "https://example.org/p", "--reported", "55.0"])
    assert rc == 0
    path = root / "cifar10" / "Linf" / "AdvMoE_R18.json"
    text = path.read_text()
    d = json.loads(text)
    # RobustBench's keys first, in its order, with its formats; indent 2 as json.dumps(indent=2) writes.
    assert list(d)[: len(RB_KEYS)] == RB_KEYS
    assert text == json.dumps(d, indent=2)
    assert d["eps"] == "8/255"
    assert d["clean_acc"] == "85.20" and d["autoattack_acc"] == "57.40" and d["reported"] == "55.00"
    assert d["name"] == "Robust MoE Training for CNNs" and d["authors"] == "A, B" and d["venue"] == "ICCV 2023"
    assert d["additional_data"] is False and d["number_forward_passes"] == 1
    assert d["architecture"] == "ResNet-18 MoE (N=2, r=0.5, layer router)"
    # The worst case (54.2) is below AutoAttack (57.4): it is the stronger evaluation, so 'external'.
    assert d["external"] == "54.20"
    assert d["unreliable"] is False
    assert "external: per-example worst case" in d["footnote"] and "router-pgd" in d["footnote"]
    # MoE extras.
    assert d["robustmoe_experts"] == 2 and d["robustmoe_scale"] == 0.5 and d["robustmoe_router"] == "layer"
    assert d["robustmoe_method"] == "advmoe" and d["robustmoe_kind"] == "moe"
    assert d["robustmoe_gflops_pathway"] == 0.27 and d["robustmoe_gflops_total"] == 0.2701
    assert d["robustmoe_pgd50_acc"] == "60.10" and d["robustmoe_worst_case_acc"] == "54.20"
    assert d["robustmoe_router_robustness"] == {"pgd-50": "87.50"}
    assert d["robustmoe_suite"] == "full" and d["robustmoe_n_examples"] == 500
    assert entry_problems(d, dataset="cifar10", threat_model="Linf") == []
    # No temporary files left behind.
    assert all_files(root) == ["cifar10/Linf/AdvMoE_R18.json"]


def test_external_only_when_stronger_and_reported_defaults_to_worst_case():
    r = make_results(robust_acc={"pgd-50": 60.0, "autoattack": 57.4, "worst_case": 57.4})
    e = entry_from_results(r, title="t")
    assert e.external is None and e.ranking_acc == pytest.approx(57.4)
    d = e.to_json_dict()
    assert "external" not in d and d["reported"] == "57.40" and d["footnote"] is None
    # Differences below the published precision do not create an 'external' equal to autoattack_acc.
    r2 = make_results(robust_acc={"autoattack": 57.404, "worst_case": 57.401})
    assert entry_from_results(r2, title="t").external is None


def test_eps_strings_per_threat_model_and_dataset():
    fm = entry_from_results(make_results(dataset="fashion-mnist", eps=0.1), title="t").to_json_dict()
    assert fm["eps"] == "0.1" and fm["dataset"] == "fashion-mnist"
    l2 = entry_from_results(make_results(threat_model="L2", eps=0.5), title="t").to_json_dict()
    assert l2["eps"] == "0.5"
    # An L2 radius of 1.0 is "1", not "255/255".
    assert entry_from_results(make_results(threat_model="L2", eps=1.0), title="t").to_json_dict()["eps"] == "1"
    tin = entry_from_results(make_results(dataset="tinyimagenet", eps=2 / 255), title="t").to_json_dict()
    assert tin["eps"] == "2/255"


def test_unreliable_from_failed_gradient_masking_flags():
    flags = copy.deepcopy(make_results()["flags"])
    flags["zero_gradients"]["passed"] = False
    flags["square_vs_whitebox"]["passed"] = False
    d = entry_from_results(make_results(flags=flags, unreliable=False), title="t").to_json_dict()
    assert d["unreliable"] is True
    assert d["robustmoe_failed_checks"] == ["square_vs_whitebox", "zero_gradients"]
    assert "Gradient-masking checks failed: square_vs_whitebox, zero_gradients" in d["footnote"]
    # The results' own verdict is honoured too.
    assert entry_from_results(make_results(unreliable=True), title="t").unreliable is True
    # A hand-edited entry that hides failed checks is caught by validation.
    d["unreliable"] = False
    assert any("unreliable is false" in p for p in entry_problems(d, dataset="cifar10", threat_model="Linf"))


def test_autoattack_in_a_cascade_is_labelled_as_such():
    def att(name, acc, skipped=None):
        return {"name": name, "attack": name, "params": {}, "robust_acc": acc, "n_attacked": 10, "n_broken": 1,
                "routing_change": None, "scope": "robust", "seconds": 1.0, "skipped": skipped}

    r = make_results(attacks=[att("pgd-50", 60.1), att("soft-pgd", None, "not an MoE model"),
                              att("autoattack", 57.4), att("router-pgd", 56.0)])
    d = entry_from_results(r, title="t").to_json_dict()
    assert d["robustmoe_autoattack_after"] == ["pgd-50"]
    assert "autoattack_acc: AutoAttack (standard) in the per-example cascade of suite 'full', after pgd-50" in d["footnote"]
    assert entry_problems(d, dataset="cifar10", threat_model="Linf") == []
    # AutoAttack first: its own number, no note.
    r = make_results(attacks=[att("autoattack", 57.4), att("router-pgd", 56.0)])
    d = entry_from_results(r, title="t").to_json_dict()
    assert d["robustmoe_autoattack_after"] == [] and "cascade" not in d["footnote"]


def test_reads_the_evaluation_producers_results():
    """Results as the evaluation package itself serialises them (EvalResult.to_dict)."""
    results_mod = pytest.importorskip("robustmoe_bench.evaluation.results")
    fields = {f for f in results_mod.EvalResult.__dataclass_fields__}
    raw = {k: v for k, v in make_results().items() if k in fields}
    raw["attacks"] = [results_mod.AttackResult("pgd-50", "pgd", {"steps": 50}, 60.1, 500, 74, 12.5, "robust", 3.0),
                      results_mod.AttackResult("autoattack", "autoattack", {}, 57.4, 426, 15, 1.0, "robust", 9.0)]
    res = results_mod.EvalResult(**raw)
    d = entry_from_results(res.to_dict(), title="t").to_json_dict()
    assert d["clean_acc"] == "85.20" and d["autoattack_acc"] == "57.40" and d["external"] == "54.20"
    assert d["robustmoe_autoattack_after"] == ["pgd-50"] and d["robustmoe_suite"] == "full"
    assert entry_problems(d, dataset="cifar10", threat_model="Linf") == []


def test_dense_model_extras_are_null_where_not_applicable():
    r = make_results(model={"arch": "wrn-28-10", "kind": "dense", "experts": 2, "scale": 0.5, "router": "layer"},
                     router_robustness=None, routing={})
    d = entry_from_results(r, title="t").to_json_dict()
    assert d["architecture"] == "WideResNet-28-10"
    assert d["robustmoe_experts"] is None and d["robustmoe_scale"] is None and d["robustmoe_router"] is None
    assert d["robustmoe_router_robustness"] is None
    assert entry_problems(d, dataset="cifar10", threat_model="Linf") == []


# --- refusing bad input ---------------------------------------------------------------------------

def test_refuses_results_without_autoattack(tmp_path, capsys):
    res = write_results(tmp_path, robust_acc={"pgd-50": 40.0, "worst_case": 40.0}, suite="quick")
    root = tmp_path / "lb"
    rc = run(["leaderboard", "publish", str(res), "--name", "M", "--root", str(root)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no AutoAttack number" in err and "'quick'" in err and "Traceback" not in err
    assert not root.exists() or all_files(root) == []


@pytest.mark.parametrize("over, message", [
    ({"robust_acc": {"autoattack": 60.0, "worst_case": 61.0}}, "worst case"),
    ({"clean_acc": 50.0}, "above clean accuracy"),
    ({"clean_acc": "high"}, "clean_acc must be a number"),
    ({"dataset": "mnist"}, "unknown leaderboard data set 'mnist'"),
    ({"threat_model": "L1"}, "unknown threat model 'L1'"),
    ({"eps": 8}, "pixel units"),
])
def test_refuses_inconsistent_results(tmp_path, capsys, over, message):
    res = write_results(tmp_path, **over)
    rc = run(["leaderboard", "publish", str(res), "--name", "M", "--root", str(tmp_path / "lb")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "lb").exists() or all_files(tmp_path / "lb") == []


def test_missing_or_corrupt_results_file(tmp_path, capsys):
    assert run(["leaderboard", "publish", str(tmp_path / "nope.json"), "--name", "M", "--root", str(tmp_path)]) == 2
    assert "results file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert run(["leaderboard", "publish", str(bad), "--name", "M", "--root", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "..", "", "a b", "x\\y", "é", "a" * 129])
def test_rejects_names_that_could_leave_the_folder(tmp_path, capsys, name):
    res = write_results(tmp_path)
    root = tmp_path / "sub" / "lb"
    rc = run(["leaderboard", "publish", str(res), "--name", name, "--root", str(root)])
    assert rc == 2 and "invalid model ID" in capsys.readouterr().err
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["results.json"]


def test_refuses_overwrite_without_force(tmp_path, capsys):
    root = tmp_path / "lb"
    res = write_results(tmp_path)
    assert run(["leaderboard", "publish", str(res), "--name", "M", "--root", str(root)]) == 0
    path = root / "cifar10" / "Linf" / "M.json"
    before = path.read_text()
    res2 = write_results(tmp_path, "r2.json", clean_acc=90.0)
    assert run(["leaderboard", "publish", str(res2), "--name", "M", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert path.read_text() == before
    assert run(["leaderboard", "publish", str(res2), "--name", "M", "--root", str(root), "--force"]) == 0
    assert json.loads(path.read_text())["clean_acc"] == "90.00"
    assert all_files(root) == ["cifar10/Linf/M.json"]


# --- parallel publishers ----------------------------------------------------------------------------

def _publish_worker(root, name, clean, barrier, queue):
    barrier.wait(timeout=30)  # start all publishers at the same moment
    try:
        publish_results(make_results(clean_acc=clean), name, root)
        queue.put((name, clean, "ok"))
    except LeaderboardError as e:
        queue.put((name, clean, f"error: {e}"))


def _run_parallel(jobs):
    """Run ``publish_results`` for each ``(root, name, clean_acc)`` in its own process, all at once;
    returns ``{clean_acc: "ok" | "error: ..."}``."""
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [ctx.Process(target=_publish_worker, args=(*j, barrier, queue)) for j in jobs]
    for p in procs:
        p.start()
    out = dict(queue.get(timeout=60)[1:] for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return out


def test_parallel_publishers_lose_no_entry(tmp_path):
    root = tmp_path / "lb"
    names = [f"Model{i}" for i in range(8)]
    out = _run_parallel([(str(root), n, 60.0 + i) for i, n in enumerate(names)])
    assert sorted(out.values()) == ["ok"] * 8
    assert all_files(root) == sorted(f"cifar10/Linf/{n}.json" for n in names)
    for i, n in enumerate(names):
        assert json.loads((root / "cifar10" / "Linf" / f"{n}.json").read_text())["clean_acc"] == f"{60 + i:.2f}"
    n, problems = validate_root(root)
    assert n == 8 and problems == []


def test_parallel_publishers_of_one_name_exactly_one_wins(tmp_path):
    for round_ in range(3):
        root = tmp_path / f"lb{round_}"
        out = _run_parallel([(str(root), "Same", 70.0 + i) for i in range(4)])
        winners = [c for c, o in out.items() if o == "ok"]
        assert len(winners) == 1, out
        losers = [o for o in out.values() if o != "ok"]
        assert len(losers) == 3 and all("already exists" in o for o in losers), losers
        d = json.loads((root / "cifar10" / "Linf" / "Same.json").read_text())
        assert d["clean_acc"] == f"{winners[0]:.2f}"  # the winner's content, complete
        assert all_files(root) == ["cifar10/Linf/Same.json"]


# --- validate -----------------------------------------------------------------------------------------

def test_validate_lists_every_problem_with_its_file(tmp_path, capsys):
    root = tmp_path / "lb"
    publish_results(make_results(), "Good", root)
    folder = root / "cifar10" / "Linf"
    good = json.loads((folder / "Good.json").read_text())
    bad1 = dict(good, clean_acc="85.2%")
    bad2 = {k: v for k, v in good.items() if k != "autoattack_acc"}
    bad3 = dict(good, external="99.00")
    (folder / "Bad1.json").write_text(json.dumps(bad1, indent=2))
    (folder / "Bad2.json").write_text(json.dumps(bad2, indent=2))
    (folder / "Bad3.json").write_text(json.dumps(bad3, indent=2))
    (folder / "Broken.json").write_text("{")
    (root / "cifar100" / "Linf").mkdir(parents=True)
    (root / "cifar100" / "Linf" / "Moved.json").write_text(json.dumps(good, indent=2))  # dataset says cifar10
    (root / "cifar10" / "Linf" / "Typo.json").write_text(json.dumps(dict(good, robustmoe_expert=2), indent=2))

    n, problems = validate_root(root)
    assert n == 7
    by_file = {}
    for p in problems:
        by_file.setdefault(p.path.name, []).append(p.message)
    assert set(by_file) == {"Bad1.json", "Bad2.json", "Bad3.json", "Broken.json", "Moved.json", "Typo.json"}
    assert any("clean_acc" in m for m in by_file["Bad1.json"])
    assert any("'autoattack_acc' is a required property" in m for m in by_file["Bad2.json"])
    assert any("external 99.00 is above autoattack_acc" in m for m in by_file["Bad3.json"])
    assert any("not valid JSON" in m for m in by_file["Broken.json"])
    assert any("does not match its folder 'cifar100'" in m for m in by_file["Moved.json"])
    assert any("robustmoe_expert" in m for m in by_file["Typo.json"])

    rc = run(["leaderboard", "validate", "--root", str(root)])
    err = capsys.readouterr().err
    assert rc == 2
    for name in by_file:
        assert name in err
    assert f"{len(problems)} problem(s) in 6 file(s)" in err and "Traceback" not in err
    # Build reports the bad files and renders the good ones (one bad file must not hide the board).
    assert run(["leaderboard", "build", "--root", str(root)]) == 0
    out, err = capsys.readouterr()
    for name in by_file:
        assert name in err
    assert "left out 6 file(s) with problems" in out and "1 entries in 1 tables" in out
    md = (root / "README.md").read_text()
    assert "**Good**" in md and "Bad1" not in md and "Moved" not in md


def test_validate_accepts_a_clean_root_and_rejects_a_missing_one(tmp_path, capsys):
    root = tmp_path / "lb"
    publish_results(make_results(), "A", root)
    assert run(["leaderboard", "validate", "--root", str(root)]) == 0
    assert "1 entry" in capsys.readouterr().out
    assert run(["leaderboard", "validate", "--root", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_validate_flags_unknown_folders(tmp_path):
    root = tmp_path / "lb"
    publish_results(make_results(), "A", root)
    (root / "mnist" / "Linf").mkdir(parents=True)
    (root / "cifar10" / "L1").mkdir(parents=True)
    _, problems = validate_root(root)
    msgs = {(p.path.name, p.message.split(";")[0]) for p in problems}
    assert ("mnist", "unknown data-set folder") in msgs and ("L1", "unknown threat-model folder") in msgs


# --- build --------------------------------------------------------------------------------------------

def test_build_sorts_by_external_else_autoattack_as_numbers(tmp_path, capsys):
    root = tmp_path / "lb"
    # A: AutoAttack 60 but worst case 50 -> ranked by external 50.
    publish_results(make_results(robust_acc={"autoattack": 60.0, "worst_case": 50.0}), "A", root)
    # B: AutoAttack 55, no external -> 55.
    publish_results(make_results(robust_acc={"autoattack": 55.0, "worst_case": 55.0}), "B", root)
    # C: 9.5 vs D: 10.0: numeric, not string, order.
    publish_results(make_results(robust_acc={"autoattack": 9.5, "worst_case": 9.5}), "C", root)
    publish_results(make_results(robust_acc={"autoattack": 10.0, "worst_case": 10.0}), "D", root)
    # A RobustBench entry without extras sits in the same table.
    (root / "cifar10" / "Linf" / "Sehwag2020Hydra.json").write_text(FIXTURE.read_text())
    # Another data set gets its own table.
    publish_results(make_results(dataset="fashion-mnist", eps=0.1), "FM", root, title="<script>alert(1)</script>")
    assert run(["leaderboard", "build", "--root", str(root)]) == 0
    assert "6 entries in 2 tables" in capsys.readouterr().out
    board = load_board(root)
    order = [r.model_id for r in board[next(k for k in board if k[0].value == "cifar10")]]
    assert order == ["Sehwag2020Hydra", "B", "A", "D", "C"]  # 57.14, 55, 50, 10, 9.5
    md = (root / "README.md").read_text()
    assert md.index("## cifar10 / Linf (eps = 8/255)") < md.index("## fashion-mnist / Linf (eps = 0.1)")
    rows = [line for line in md.splitlines() if line.startswith("| ") and "**" in line]
    assert [r.split("**")[1] for r in rows[:5]] == order
    assert "[HYDRA: Pruning Adversarially Robust Neural Networks](https://arxiv.org/abs/2002.10509)" in md
    a_row = next(r for r in rows if "**A**" in r)
    # AutoAttack 60 % and the ranked worst case 50 % of n = 500, each with its 95 % Wilson interval
    assert r"| 60.00% \[55.6, 64.2\] | 50.00% \[45.6, 54.4\] |" in a_row and "| 500 |" in a_row
    page = (root / "index.html").read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert page.count("<table class=\"board\"") == 2  # one ranked table per data set and threat model
    # Deterministic: rebuilding writes identical files.
    build(root)
    assert (root / "README.md").read_text() == md and (root / "index.html").read_text() == page
    # The rendered files are not mistaken for entries.
    assert validate_root(root)[0] == 6


# --- RobustBench compatibility ----------------------------------------------------------------------

def _robustbench_key(x: dict) -> float:
    """How RobustBench's leaderboard code ranks an entry (its documented rule, not its code): the first
    of ('external', 'autoattack_acc') present, read with float()."""
    for k in ("external", "autoattack_acc"):
        if k in x:
            return float(x[k])
    raise KeyError("autoattack_acc")


def test_entry_matches_robustbench_fixture_field_by_field(tmp_path):
    rb = json.loads(FIXTURE.read_text())
    ours = entry_from_results(make_results(), title="t").to_json_dict()
    ours_rb = {k: v for k, v in ours.items() if not k.startswith("robustmoe_")}
    # Same keys (ours adds 'external', which RobustBench also uses), in the same order, same JSON types.
    assert [k for k in ours_rb if k != "external"] == list(rb)
    for k, v in rb.items():
        assert type(ours_rb[k]) is type(v) or v is None, k
    # Numbers as RobustBench stores them: strings that float() reads, two decimals.
    for k in ("clean_acc", "reported", "autoattack_acc", "external"):
        assert isinstance(ours[k], str) and ours[k] == f"{float(ours[k]):.2f}"
    assert ours["eps"] == rb["eps"] == "8/255"
    # RobustBench's reading: float(...)/100 for accuracies, ranking by external-else-autoattack.
    assert float(ours["clean_acc"]) / 100 == pytest.approx(0.852)
    assert _robustbench_key(ours) == pytest.approx(54.2) and _robustbench_key(rb) == pytest.approx(57.14)
    # Our validator and reader accept RobustBench's own entries unchanged.
    assert entry_problems(rb, dataset="cifar10", threat_model="Linf") == []


def _robustbench_leaderboard_reader():
    """robustbench's own leaderboard code (``robustbench.utils.get_leaderboard_latex``), imported without
    running the package's ``__init__``.

    Why: robustbench 1.1.1's ``__init__`` imports its evaluation code, which needs a module named
    ``autoattack`` (PyPI's pyautoattack, which robustbench itself requires, installs ``pyautoattack``)
    and ``pkg_resources`` (gone from setuptools >= 81), so ``import robustbench`` fails in any fresh
    environment. ``robustbench.utils`` -- the leaderboard reader -- needs neither; we load the installed
    package's real modules through a bare package object. robustbench is a dev dependency
    (pyproject.toml), so a missing package is a set-up error and fails, never skips."""
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("robustbench")
    assert spec is not None and spec.submodule_search_locations, (
        "robustbench is not installed: it is a dev dependency (pip install -e '.[dev]' / make setup)")
    saved = {k: v for k, v in sys.modules.items() if k == "robustbench" or k.startswith("robustbench.")}
    pkg = types.ModuleType("robustbench")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["robustbench"] = pkg
    try:
        from robustbench.utils import get_leaderboard_latex
    finally:
        for k in [k for k in sys.modules if k == "robustbench" or k.startswith("robustbench.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return get_leaderboard_latex


def test_robustbench_package_reads_our_entries(tmp_path, monkeypatch):
    """The real ``robustbench`` package's leaderboard code reads our folder (runs in CI, never skips)."""
    get_leaderboard_latex = _robustbench_leaderboard_reader()
    folder = tmp_path / "model_info" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    (folder / "Sehwag2020Hydra.json").write_text(FIXTURE.read_text())
    publish_results(make_results(), "AdvMoE_R18", tmp_path / "model_info")
    publish_results(make_results(robust_acc={"autoattack": 70.0, "worst_case": 70.0}), "Top_MoE", tmp_path / "model_info")
    monkeypatch.chdir(tmp_path)
    rows = get_leaderboard_latex("cifar10", "Linf").splitlines()
    assert len(rows) == 3
    # Ranked by external-else-autoattack: Top_MoE 70.00, Hydra 57.14, AdvMoE_R18 54.20 (external).
    # (RobustBench cites the part of the file name before the first '_'.)
    assert rows[0].startswith("1 &\\citet{Top} & 85.20 & 70.00 & N & ")
    assert rows[1].startswith("2 &\\citet{Sehwag2020Hydra} & 88.98 & 57.14 & Y & WRN-28-10 & NeurIPS 2020")
    assert rows[2].startswith("3 &\\citet{AdvMoE} & 85.20 & 54.20 & N & RN-18 MoE (N=2, r=0.5, layer router)")


# --- routing health ---------------------------------------------------------------------------------

def _use(busiest: list[float], collapsed: bool) -> dict:
    return {"n_inputs": 500, "n_experts": 2, "layers": [f"l{i}" for i in range(len(busiest))],
            "share": [[b, 1 - b] for b in busiest], "busiest_share": busiest,
            "entropy_normalised": [0.5] * len(busiest), "collapsed_layers": [], "collapsed": collapsed}


def test_board_shows_expert_use_and_marks_collapsed_routers(tmp_path):
    root = tmp_path / "lb"
    publish_results(make_results(expert_use=_use([0.55, 0.62], False)), "Routes", root)
    publish_results(make_results(expert_use=_use([1.0, 1.0], True)), "Collapsed", root)
    publish_results(make_results(), "Old", root)  # results written before routing health was recorded
    d = json.loads((root / "cifar10" / "Linf" / "Collapsed.json").read_text())
    assert d["robustmoe_expert_use"] == {"n_inputs": 500, "n_experts": 2, "busiest_share": [1.0, 1.0],
                                         "entropy_normalised": [0.5, 0.5], "collapsed": True}
    assert entry_problems(d, dataset="cifar10", threat_model="Linf") == []
    assert "robustmoe_expert_use" not in json.loads((root / "cifar10" / "Linf" / "Old.json").read_text())
    build(root)
    md = (root / "README.md").read_text()
    rows = {r.split("**")[1]: r for r in md.splitlines() if r.startswith("| ") and "**" in r}
    assert "| busiest 62% | 87.50% (pgd-50) |" in rows["Routes"]
    assert "| COLLAPSED, busiest 100% | 87.50% (pgd-50) — COLLAPSED router |" in rows["Collapsed"]
    assert "| not recorded | 87.50% (pgd-50) — routing health not recorded |" in rows["Old"]
    # every router-robustness figure of a collapsed (or unknown) router carries its mark, on the page too
    page = (root / "index.html").read_text()
    assert page.count("87.50% (pgd-50) — COLLAPSED router") == 1
    assert "busiest expert per MoE layer 100%, 100% (balanced: 50%)" in page and "COLLAPSED</span>" in page
    # a dense model has no expert-use cell
    publish_results(make_results(model={"arch": "resnet18", "kind": "dense", "dataset": "cifar10"},
                                 router_robustness=None, routing={}), "Dense", root)
    build(root)
    dense = next(r for r in (root / "README.md").read_text().splitlines() if "**Dense**" in r)
    assert "busiest" not in dense and "not recorded" not in dense


@pytest.mark.parametrize("use,message", [
    ({"n_inputs": 5}, "expert_use lacks 'n_experts'"),
    (dict(_use([1.5], False)), "busiest_share must be shares in"),
    (dict(_use([0.5], False), collapsed="no"), "must be true or false"),
])
def test_bad_expert_use_is_refused(tmp_path, use, message):
    with pytest.raises(LeaderboardError, match=message):
        entry_from_results(make_results(expert_use=use), title="t")
