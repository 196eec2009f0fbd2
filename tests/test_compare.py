"""compare: one table over synthetic evaluation results; CLI errors; flops CLI; plot helpers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustmoe_bench.analysis.compare import ResultsFileError, compare_results
from robustmoe_bench.analysis.plots import check_png, new_figure, save_figure
from robustmoe_bench.cli import run


def result(kind: str, clean: float, robust: dict[str, float], gflops: float | None, method: str,
           arch: str = "resnet18", dataset: str = "cifar10", experts: int = 2, scale: float = 0.5) -> dict:
    return {
        "schema_version": 1, "suite": "full", "dataset": dataset, "threat_model": "Linf", "eps": 8 / 255,
        "eps_str": "8/255", "n_examples": 100, "seed": 0, "clean_acc": clean, "robust_acc": robust,
        "attacks": [], "routing": {}, "router_robustness": None, "flags": {}, "unreliable": False,
        "gflops": None if gflops is None else {"pathway": gflops, "router": 0.0, "total": gflops},
        "seconds": 1.0,
        "model": {"arch": arch, "kind": kind, "experts": experts, "scale": scale, "router": "layer",
                  "dataset": dataset, "num_classes": 10, "input_shape": [3, 32, 32]},
        "training": {"method": method}, "checkpoint": "x.safetensors", "package_version": "0.1.0",
    }


@pytest.fixture()
def files(tmp_path: Path) -> list[Path]:
    specs = {
        "dense_at": result("dense", 84.0, {"pgd-50": 52.0, "autoattack": 48.5, "worst_case": 48.25}, 0.5567,
                           "at-dense"),
        "moe_advmoe": result("moe", 82.125, {"pgd-50": 51.5, "worst_case": 50.0}, 0.1505, "advmoe"),
        "sdense_mini": result("sdense", 70.0, {"square": 60.0, "worst_case": 59.0}, 0.01, "at-sdense",
                              arch="resnet-mini", dataset="fashion-mnist"),
    }
    paths = []
    for name, d in specs.items():
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(d))
        paths.append(p)
    return paths


EXPECTED_MD = """\
| model | arch | dataset | method | kind | clean | pgd-50 | autoattack | square | worst case [95% CI] | n | vs best | GFLOPs | saving vs Dense | expert use; router robust |
| :--- | :--- | :--- | :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| dense_at | resnet18 | cifar10 | at-dense | dense | 84.00 | 52.00 | 48.50 | - | 48.25 [38.5, 57.7] | 100 | - | 0.5567 | 0.0% | - |
| moe_advmoe | resnet18 | cifar10 | advmoe | moe N=2 r=0.5 layer | 82.12 | 51.50 | - | - | 50.00 [40.4, 59.6] | 100 | - | 0.1505 | 73.0% | not recorded |
| sdense_mini | resnet-mini | fashion-mnist | at-sdense | sdense r=0.5 | 70.00 | - | - | 60.00 | 59.00 [49.2, 68.1] | 100 | best | 0.01 | - | - |
"""


def test_routing_health_column_marks_collapsed_routers(tmp_path: Path) -> None:
    def moe(name: str, **over) -> Path:
        d = result("moe", 80.0, {"pgd-50": 50.0, "worst_case": 49.0}, 0.1, "at-moe")
        d.update(over)
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(d))
        return p

    use = {"n_inputs": 100, "n_experts": 2, "busiest_share": [0.55, 0.61], "collapsed": False}
    rows = compare_results([
        moe("routes", expert_use=use, router_robustness={"pgd-50": 71.0}),
        moe("collapsed", expert_use=dict(use, busiest_share=[1.0, 1.0], collapsed=True),
            router_robustness={"pgd-50": 100.0}),
        moe("old", router_robustness={"pgd-50": 100.0}),
    ]).rows
    assert [r.routing for r in rows] == ["61%; 71.0% (pgd-50)", "100% COLLAPSED; 100.0% (pgd-50) meaningless",
                                         "not recorded; 100.0% (pgd-50) unverified"]
    # the terminal's stacked layout (80 columns) keeps the mark in the model cell
    from rich.console import Console

    con = Console(width=80, record=True)
    con.print(compare_results([moe("collapsed2", expert_use=dict(use, busiest_share=[1.0, 1.0], collapsed=True),
                                   router_robustness={"pgd-50": 100.0})]).to_rich(80))
    text = " ".join(con.export_text().split())
    assert "COLLAPSED" in text and "meaningless" in text
    with pytest.raises(ResultsFileError, match="expert_use must hold busiest_share"):
        compare_results([moe("bad", expert_use={"collapsed": "yes"})])


def test_markdown_exact(files: list[Path]) -> None:
    table = compare_results(files)
    assert table.attacks == ["pgd-50", "autoattack", "square"]
    assert table.rows[1].saving == pytest.approx(1 - 0.1505 / 0.5567)
    assert table.to_markdown() == EXPECTED_MD
    # the terminal view keeps the headline attacks only; rows and worst case unchanged
    small = table.compact()
    assert small.attacks == ["pgd-50", "autoattack"] and small.rows == table.rows
    assert [row[-6] for row in small.cells()] == ["48.25 [38.5, 57.7]", "50.00 [40.4, 59.6]", "59.00 [49.2, 68.1]"]
    assert small.headers()[6:8] == ["pgd-50", "autoattack"] and "square" not in small.headers()


def test_cli_writes_markdown(files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    assert run(["compare", *map(str, files), "--markdown", str(out)]) == 0
    assert out.read_text() == EXPECTED_MD


@pytest.mark.parametrize("content,match", [
    ("{not json", "not a JSON results file"),
    (json.dumps({"link": "x", "name": "leaderboard entry"}), "not a robustmoe-bench evaluation results file"),
    (json.dumps({**result("dense", 1, {"worst_case": 1}, 1, "std"), "schema_version": 7}), "schema_version 7"),
    (json.dumps({**result("dense", 1, {"pgd-50": 1}, 1, "std")}), "worst_case"),
    (json.dumps({**result("dense", "high", {"worst_case": 1}, 1, "std")}), "'clean_acc' must be a number"),
])
def test_bad_files_name_the_file(tmp_path: Path, files: list[Path], content: str, match: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(ResultsFileError, match=match) as e:
        compare_results([files[0], bad])
    assert str(bad) in str(e.value)
    md = tmp_path / "never.md"
    assert run(["compare", str(files[0]), str(bad), "--markdown", str(md)]) == 2
    assert not md.exists()  # no half-written output


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ResultsFileError, match="no such results file"):
        compare_results([tmp_path / "nope.json"])


def test_flops_cli_json_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["flops", "--arch", "resnet-tiny", "--kind", "sdense", "--dataset", "cifar10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # resnet-tiny S-Dense (widths 4-4-8) at 32x32: hand count as in test_flops, H = 32
    h1, h2 = 32, 16
    conv = (4 * 3 * 9 * h1 * h1 + 4 * 4 * 9 * h1 * h1 * 2 + 8 * 4 * 9 * h2 * h2 + 8 * 8 * 9 * h2 * h2
            + 8 * 4 * h2 * h2)
    bn = 2 * (4 * h1 * h1 * 3 + 8 * h2 * h2 * 3)
    assert out["gflops_total"] == pytest.approx((conv + bn + 8 * h2 * h2 + 80) / 1e9, rel=1e-12)
    assert out["gflops_router"] == 0.0 and out["gflops_pathway"] == out["gflops_total"]
    assert run(["flops"]) == 2
    assert "give a checkpoint, or --arch" in capsys.readouterr().err
    assert run(["flops", "--arch", "resnet-tiny", "--kind", "bogus"]) == 2
    assert "unknown model kind 'bogus'" in capsys.readouterr().err


def test_flops_cli_checkpoint_without_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robustmoe_bench.checkpoint import save_checkpoint
    from robustmoe_bench.models import create_model

    ck = tmp_path / "m.safetensors"
    save_checkpoint(ck, create_model("resnet-tiny", kind="moe", dataset="cifar10"), training={"method": "std"})
    assert run(["flops", str(ck), "--data-root", str(tmp_path / "no-data")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_plots_atomic_png(tmp_path: Path) -> None:
    fig, ax = new_figure("Robust accuracy", "epsilon", "accuracy (%)")
    ax.plot([0, 1], [80, 40], label="MoE")
    ax.legend()
    assert ax.get_title() == "Robust accuracy" and ax.get_xlabel() == "epsilon"
    path = save_figure(fig, tmp_path / "sub" / "f.png")
    w, h = check_png(path)
    assert (w, h) == (960, 630)  # 6.4 x 4.2 inches at 150 dpi
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]  # no temp file left


# --- uncertainty: paired McNemar test and the 80-column terminal ------------------------------------

def _paired(tmp_path: Path, name: str, worst: str, *, sha: str = "a" * 64, method: str = "at-dense",
            kind: str = "dense", n_total: int = 10000) -> Path:
    n = len(worst)
    acc = round(100 * worst.count("1") / n, 4)
    d = result(kind, 90.0, {"pgd-50": acc, "autoattack": acc, "worst_case": acc}, 0.003, method,
               arch="resnet-mini", dataset="fashion-mnist")
    d.update(n_examples=n, n_total=n_total, examples={"indices_sha256": sha, "clean": "1" * n, "worst_case": worst})
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(d))
    return p


def test_mcnemar_marks_differences_that_are_not_significant(tmp_path: Path) -> None:
    base = "1" * 60 + "0" * 40
    # b: 8 examples robust only for the best, 3 only for b -> 2 * P(X <= 3 | 11, 1/2) = 464/2048
    b = "1" * 52 + "0" * 8 + "111" + "0" * 37
    # c: 15 vs 1 discordant -> 2 * 17 / 65536: significant
    c = "1" * 45 + "0" * 15 + "1" + "0" * 39
    paths = [_paired(tmp_path, "best", base), _paired(tmp_path, "close", b), _paired(tmp_path, "worse", c),
             _paired(tmp_path, "other_examples", b, sha="b" * 64)]
    table = compare_results(paths)
    vs = {r.name: r.vs_best for r in table.rows}
    assert vs == {"best": "best", "close": "p=0.23 n.s.", "worse": "p=0.00052", "other_examples": "-"}
    row = next(r for r in table.rows if r.name == "close")
    assert row.n_label == "100 of 10000" and row.worst_interval == pytest.approx((45.24, 64.39), abs=0.01)
    md = table.to_markdown()
    assert "| 55.00 [45.2, 64.4] | 100 of 10000 | p=0.23 n.s. |" in md


def test_bad_outcomes_are_refused_with_one_line(tmp_path: Path, capsys) -> None:
    p = _paired(tmp_path, "m", "1" * 10)
    d = json.loads(p.read_text())
    d["examples"]["worst_case"] = "1" * 9  # not one outcome per example
    p.write_text(json.dumps(d))
    assert run(["compare", str(p)]) == 2
    err = capsys.readouterr().err
    assert "examples.worst_case must be a string of 10" in err and "Traceback" not in err


def test_terminal_comparison_is_readable_at_80_columns(tmp_path: Path) -> None:
    """The main job's closing table at 80 columns: every name, number, interval and test result whole."""
    import io

    from rich.console import Console

    methods = [("at-dense", "dense"), ("at-sdense", "sdense"), ("at-sparse", "sparse"), ("at-moe", "moe"),
               ("advmoe", "moe")]
    outcomes = ["1" * 60 + "0" * 140, "1" * 55 + "0" * 145, "1" * 50 + "0" * 150, "1" * 58 + "0" * 142,
                "1" * 62 + "0" * 138]
    paths = [_paired(tmp_path, m, o, method=m, kind=k) for (m, k), o in zip(methods, outcomes)]
    table = compare_results(paths).compact()
    console = Console(width=80, file=io.StringIO(), record=True, color_system=None)
    console.print(table.to_rich(console.width))
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text
    for (m, k), r in zip(methods, table.rows):
        assert any(line.split() and line.split()[0] == m for line in lines), m  # whole name in its own cell
        assert r.worst_text.split(" [")[0] in text and f"[{r.worst_interval[0]:.1f}, {r.worst_interval[1]:.1f}]" in text
        assert r.vs_best.split()[0] in text
    assert "n.s." in text  # 62 vs 60 of 200 is noise, and the table says so
    # wide consoles keep the one-line-per-model layout
    wide = Console(width=250, file=io.StringIO(), record=True, color_system=None)
    wide.print(table.to_rich(wide.width))
    assert sum(1 for line in wide.export_text().splitlines() if "at-sdense" in line) == 1
