"""Hostile and malformed inputs (issue 12): each item of the input review has a test here.

Bad input gives one clear line on stderr, exit code 2, no traceback and no half-written output."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustmoe_bench.checkpoint import save_checkpoint
from robustmoe_bench.cli import run
from robustmoe_bench.leaderboard import build, publish_results, validate_root
from robustmoe_bench.models import create_model

from test_leaderboard import FIXTURE, make_results, write_results

REPO = Path(__file__).resolve().parents[1]
RB_INFO = Path(__file__).parent / "fixtures" / "robustbench_model_info"


def one_line_error(capsys, rc: int, *needles: str) -> str:
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture()
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# --- links, escaping, names ---------------------------------------------------------------------------

@pytest.mark.parametrize("link", ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,<b>x</b>",
                                  "//evil.example/x", "https://ok.example/ x", "vbscript:x", "http:///nohost"])
def test_publish_refuses_links_that_are_not_http(tmp_path, capsys, link):
    res = write_results(tmp_path)
    root = tmp_path / "lb"
    rc = run(["leaderboard", "publish", str(res), "--name", "M", "--root", str(root), "--link", link])
    one_line_error(capsys, rc, "link")
    assert not root.exists() or not any(p.is_file() for p in root.rglob("*"))


def test_http_links_are_links_and_other_schemes_on_disk_never_render(tmp_path):
    root = tmp_path / "lb"
    publish_results(make_results(), "Good", root, link="https://example.org/paper?a=1&b=(2)")
    bad = json.loads((root / "cifar10" / "Linf" / "Good.json").read_text())
    bad["link"] = "javascript:alert(document.cookie)"
    (root / "cifar10" / "Linf" / "Evil.json").write_text(json.dumps(bad))
    _, problems = validate_root(root)
    assert [p.path.name for p in problems if not p.warning] == ["Evil.json"]
    assert "http:// or https://" in problems[0].message
    build(root)
    md, page = (root / "README.md").read_text(), (root / "index.html").read_text()
    assert "javascript:" not in md.lower() and "javascript:" not in page.lower()
    assert "](https://example.org/paper?a=1&b=%282%29)" in md  # parentheses cannot end the link early
    assert 'href="https://example.org/paper?a=1&amp;b=(2)"' in page


HOSTILE = {
    "title": "<script>alert(1)</script> [click](javascript:alert(2))",
    "authors": "<svg onload=alert(3)>",
    "venue": "<img src=x onerror=alert(4)>",
    "architecture": "*bold* | pipe `code` ![img](javascript:alert(5))",
    "footnote": "see [here](javascript:alert(6)) <iframe src=//x></iframe>",
}


def test_every_user_field_is_escaped_in_markdown_and_html(tmp_path, capsys):
    res = write_results(tmp_path)
    root = tmp_path / "lb"
    args = ["leaderboard", "publish", str(res), "--name", "Hostile", "--root", str(root)]
    for k, v in HOSTILE.items():
        args += [f"--{k}", v]
    assert run(args) == 0
    assert run(["leaderboard", "build", "--root", str(root)]) == 0
    md, page = (root / "README.md").read_text(), (root / "index.html").read_text()
    import re

    for text in (md, page):
        low = text.lower()
        for bad in ("<script>alert", "<svg onload", "<img src=x", "<iframe"):
            assert bad not in low, bad
    # Markdown: no link or image can form -- every ']' before '(javascript:' is backslash-escaped, so
    # the text stays text; HTML is entities; emphasis, code and table pipes are escaped
    assert re.search(r"(?<!\\)\]\(javascript:", md) is None
    assert md.count("](javascript:") == 3 and md.count(r"\](javascript:") == 3
    assert r"\[click\]" in md and "&lt;script&gt;" in md and r"\*bold\* \| pipe \`code\` !\[img\]" in md
    assert r"\[here\]" in md
    # HTML: no attribute or element from a field; 'javascript:' appears only as text
    assert 'href="javascript' not in page.lower() and "src=x" not in page.replace("src=x onerror", "")
    assert "&lt;svg onload=alert(3)&gt;" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # our own markup survives: the footnote separator and the page's script and scatter
    assert page.count("<script>") == 1 and '<svg class="scatter"' in page


def test_markdown_table_rows_stay_rows(tmp_path):
    """A '|' or a newline in a field must not add cells or rows to the README table."""
    root = tmp_path / "lb"
    publish_results(make_results(), "A", root, title="a | b\n| c | d |", architecture="x|y")
    build(root)
    rows = [line for line in (root / "README.md").read_text().splitlines() if line.startswith("| ") and "**A**" in line]
    assert len(rows) == 1
    header = next(line for line in (root / "README.md").read_text().splitlines() if line.startswith("| #"))
    unescaped = lambda s: s.replace("\\|", "").count("|")  # noqa: E731
    assert unescaped(rows[0]) == unescaped(header)


@pytest.mark.parametrize("name", ["ok\n", "ok\r\n", "\nok", "a/b", "../x", ".hidden", "", "a" * 129, "ok\x00"])
def test_names_must_match_in_full(tmp_path, capsys, name):
    res = write_results(tmp_path)
    rc = run(["leaderboard", "publish", str(res), "--name", name, "--root", str(tmp_path / "lb")])
    one_line_error(capsys, rc, "invalid model ID")
    assert not (tmp_path / "lb").exists()


def test_zoo_add_refuses_a_name_with_a_trailing_newline(tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, create_model("resnet-tiny", dataset="fashion-mnist"))
    rc = run(["zoo", "add", "m\n", str(ckpt), "--root", str(tmp_path / "zoo")])
    one_line_error(capsys, rc, "invalid zoo model name")
    assert not (tmp_path / "zoo" / "registry.json").exists() or "m\\n" not in (tmp_path / "zoo" / "registry.json").read_text()


@pytest.mark.parametrize("argv", [
    ["leaderboard", "publish", "{res}", "--name", "[/]", "--root", "{tmp}/lb"],
    ["leaderboard", "publish", "{res}", "--name", "[bold]x[/bold]", "--root", "{tmp}/lb"],
    ["zoo", "show", "[/]", "--root", "{tmp}/zoo"],
    ["leaderboard", "validate", "--root", "{tmp}/[/]"],
    ["compare", "{tmp}/[/].json"],
])
def test_user_text_is_never_read_as_rich_markup(tmp_path, capsys, argv):
    res = write_results(tmp_path)
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "registry.json").write_text(json.dumps({"schema_version": 1, "models": {}}))
    argv = [a.format(res=res, tmp=tmp_path) for a in argv]
    rc = run(argv)
    err = one_line_error(capsys, rc)
    assert "[/]" in err or "[bold]x[/bold]" in err  # shown literally


def test_markup_in_stored_text_prints_literally(tmp_path, capsys):
    """A zoo record whose description holds rich markup is shown as written (no MarkupError)."""
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, create_model("resnet-tiny", dataset="fashion-mnist"))
    zoo = tmp_path / "zoo"
    assert run(["zoo", "add", "m", str(ckpt), "--root", str(zoo), "--description", "[/] and [red]x[/red]"]) == 0
    capsys.readouterr()
    assert run(["zoo", "show", "m", "--root", str(zoo)]) == 0
    assert "[/] and [red]x[/red]" in capsys.readouterr().out


# --- permissions -------------------------------------------------------------------------------------

def test_outputs_are_world_readable(tmp_path, umask022):
    root = tmp_path / "lb"
    publish_results(make_results(), "A", root)
    paths, _, _ = build(root)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, create_model("resnet-tiny", dataset="fashion-mnist"))
    zoo = tmp_path / "zoo"
    assert run(["zoo", "add", "m", str(ckpt), "--root", str(zoo)]) == 0
    conv = tmp_path / "conv.safetensors"
    data = REPO / "tests" / "data" / "advmoe_public_resnet18_r0125.pth.tar"
    assert run(["convert", str(data), "--from", "advmoe-public", "--arch", "resnet18", "--experts", "2",
                "--scale", "0.125", "--dataset", "cifar10", "--out", str(conv)]) == 0
    md = tmp_path / "cmp.md"
    res = write_results(tmp_path)
    assert run(["compare", str(res), "--markdown", str(md)]) == 0
    for p in [*paths, root / "cifar10" / "Linf" / "A.json", zoo / "registry.json", zoo / "m.safetensors", ckpt,
              conv, md]:
        assert (p.stat().st_mode & 0o777) == 0o644, (p, oct(p.stat().st_mode))


# --- checkpoints: weights checked before a model is built --------------------------------------------

def _lying_checkpoint(tmp_path: Path) -> Path:
    """A resnet-tiny checkpoint whose metadata claims a wrn-28-30 (gigabytes if built)."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    real = tmp_path / "real.safetensors"
    save_checkpoint(real, create_model("resnet-tiny", dataset="fashion-mnist"))
    with safe_open(str(real), "pt") as f:
        meta = dict(f.metadata())
    m = json.loads(meta["robustmoe"])
    m["model"]["arch"] = "wrn-28-30"
    meta["robustmoe"] = json.dumps(m)
    lying = tmp_path / "lying.safetensors"
    save_file(load_file(str(real)), str(lying), metadata=meta)
    return lying


def test_info_checks_weights_before_building_a_model(tmp_path, capsys, monkeypatch):
    lying = _lying_checkpoint(tmp_path)
    import robustmoe_bench.models as models

    built: list[str] = []
    real_build = models.build_model

    def spy(spec):
        model = real_build(spec)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(models, "build_model", spy)
    rc = run(["info", str(lying)])
    one_line_error(capsys, rc, "weights do not match the stored model spec")
    assert built == ["meta"]  # only the shape-only skeleton was built, never the real wrn-28-30


def test_truncated_header_and_wrong_shapes_are_refused(tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    real = tmp_path / "real.safetensors"
    save_checkpoint(real, create_model("resnet-tiny", dataset="fashion-mnist"))
    with safe_open(str(real), "pt") as f:
        meta = dict(f.metadata())
    t = load_file(str(real))
    k = next(k for k in t if k.endswith("weight") and t[k].dim() == 4)
    t[k] = torch.zeros(1, 1, 1, 1)
    bad = tmp_path / "shape.safetensors"
    save_file(t, str(bad), metadata=meta)
    one_line_error(capsys, run(["info", str(bad)]), "of another shape", k)


# --- registries --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../escape", "a/b", ".x", "x\n"])
def test_registry_names_are_validated(tmp_path, capsys, monkeypatch, name):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    rec = {"sha256": "0" * 64, "size_bytes": 10, "model": {}, "url": "https://example.org/w.safetensors"}
    (zoo / "registry.json").write_text(json.dumps({"schema_version": 1, "models": {name: rec}}))
    monkeypatch.setenv("ROBUSTMOE_CACHE", str(tmp_path / "cache"))
    rc = run(["zoo", "show", "x", "--root", str(zoo), "--download"])
    one_line_error(capsys, rc, "zoo model name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["registry.json", "zoo"]  # nothing written anywhere


@pytest.mark.parametrize("field,value,needle", [
    ("size_bytes", "10", "'size_bytes' must be an integer"),
    ("url", "ftp://example.org/w", "url must start with"),
    ("model", [1], "'model' must be an object"),
])
def test_registry_fields_have_strict_types(tmp_path, capsys, field, value, needle):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    rec = {"sha256": "0" * 64, "size_bytes": 10, "model": {}, "url": "https://example.org/w.safetensors"}
    rec[field] = value
    (zoo / "registry.json").write_text(json.dumps({"schema_version": 1, "models": {"m": rec}}))
    one_line_error(capsys, run(["zoo", "list", "--root", str(zoo)]), needle)


# --- strict types and deep JSON ----------------------------------------------------------------------

@pytest.mark.parametrize("over,needle", [
    ({"flags": {"eps_increase": {"passed": "false", "evidence": "-"}}}, "'passed' is true or false"),
    ({"n_examples": "abc"}, "'n_examples' must be an integer"),
    ({"n_examples": True}, "'n_examples' must be an integer"),
    ({"clean_acc": "85.2"}, "clean_acc must be a number"),
    ({"robust_acc": {"autoattack": "57.4", "worst_case": 50.0}}, "'robust_acc' entry 'autoattack' must be a finite number"),
    ({"model": {"arch": "resnet18", "kind": "moe", "experts": "two"}}, "'experts' must be an integer"),
    ({"training": {"method": 7}}, "'method' must be a string"),
    ({"unreliable": "no"}, "'unreliable' must be true or false"),
    ({"worst_case_attacks": "pgd-50"}, "'worst_case_attacks' must be a list"),
])
def test_publish_refuses_malformed_results_in_one_line(tmp_path, capsys, over, needle):
    res = write_results(tmp_path, **over)
    rc = run(["leaderboard", "publish", str(res), "--name", "M", "--root", str(tmp_path / "lb")])
    one_line_error(capsys, rc, needle)
    assert not (tmp_path / "lb").exists()


def test_evaluation_results_load_strictly(tmp_path):
    from robustmoe_bench.errors import ConfigError
    from robustmoe_bench.evaluation import EvalResult

    d = make_results()
    d["attacks"] = [{"name": "pgd-50", "attack": "pgd", "params": {}, "robust_acc": "60", "n_attacked": 1,
                     "n_broken": 0, "routing_change": None, "scope": "robust", "seconds": 1.0, "skipped": None}]
    with pytest.raises(ConfigError, match="'robust_acc' must be a finite number"):
        EvalResult.from_dict(d)
    d["attacks"] = []
    d["flags"] = {"zero_gradients": {"passed": "false"}}
    with pytest.raises(ConfigError, match="'passed' is true or false"):
        EvalResult.from_dict(d)


def _deep(n: int = 200_000) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("argv,where", [
    (["leaderboard", "publish", "{f}", "--name", "M", "--root", "{tmp}/lb"], "results"),
    (["compare", "{f}"], "results"),
    (["leaderboard", "validate", "--root", "{tmp}/lbroot"], "entry"),
    (["zoo", "list", "--root", "{tmp}/zoo"], "registry"),
])
def test_deeply_nested_json_is_one_clear_line(tmp_path, capsys, argv, where):
    f = tmp_path / "deep.json"
    f.write_text(_deep())
    (tmp_path / "lbroot" / "cifar10" / "Linf").mkdir(parents=True)
    (tmp_path / "lbroot" / "cifar10" / "Linf" / "Deep.json").write_text('{"a": ' + _deep() + "}")
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "registry.json").write_text(_deep(5000))
    argv = [a.format(f=f, tmp=tmp_path) for a in argv]
    rc = run(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err and "internal error" not in err and "RecursionError" not in err
    assert "nested deeper than 64 levels" in err
    assert not (tmp_path / "lb").exists()


# --- RobustBench's own files -------------------------------------------------------------------------

def test_validate_accepts_robustbenchs_own_model_info_files(tmp_path, capsys):
    """Corruption entries (eps null, no autoattack_acc, 3d keys, reported null / "null"), reported "",
    and one file whose dataset disagrees with its folder (a warning, as RobustBench ships it)."""
    root = tmp_path / "model_info"
    shutil.copytree(RB_INFO, root)
    n, problems = validate_root(root)
    assert n == 5 and [p for p in problems if not p.warning] == []
    assert [p.path.name for p in problems] == ["Hendrycks2019Using.json"]
    assert run(["leaderboard", "validate", "--root", str(root)]) == 0
    assert "5 entries" in capsys.readouterr().out
    _, board, _ = build(root)
    assert sum(len(v) for v in board.values()) == 5
    md = (root / "README.md").read_text()
    assert "## imagenet / corruptions" in md and "21.12%" in md  # AlexNet's corruptions_acc


def test_build_reports_a_bad_file_and_renders_the_rest(tmp_path, capsys):
    root = tmp_path / "model_info"
    shutil.copytree(RB_INFO, root)
    (root / "cifar10" / "Linf").mkdir(parents=True, exist_ok=True)
    (root / "cifar10" / "Linf" / "Sehwag2020Hydra.json").write_text(FIXTURE.read_text())
    (root / "cifar10" / "Linf" / "Broken.json").write_text('{"eps": ')
    rc = run(["leaderboard", "build", "--root", str(root)])
    out, err = capsys.readouterr()
    assert rc == 0 and "Broken.json" in err and "not valid JSON" in err
    assert "6 entries" in out and "left out 1 file(s)" in out
    assert "Sehwag2020Hydra" in (root / "README.md").read_text() and "Broken" not in (root / "index.html").read_text()


# --- the zoo from an installed wheel -----------------------------------------------------------------

def test_zoo_works_from_an_installed_wheel(tmp_path):
    """Build the wheel, install it into a folder outside the source tree, and load a packaged zoo model:
    the weights are not in the wheel, so they are looked for in the cache folder."""
    import importlib.util

    wheels = tmp_path / "wheels"
    # build with the environment's setuptools when it has one (no download), else in pip's isolation
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True, timeout=300)
    site = tmp_path / "site"
    whl = next(wheels.glob("robustmoe_bench-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(whl)],
                   check=True, capture_output=True, timeout=300)
    assert not (site / "model_zoo").exists() and (site / "robustmoe_bench" / "zoo_registry.json").is_file()
    env = {**os.environ, "PYTHONPATH": str(site), "ROBUSTMOE_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    env.pop("ROBUSTMOE_ZOO", None)
    cmd = [sys.executable, "-m", "robustmoe_bench", "zoo", "show", "fmnist-at-dense"]
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 2 and "Traceback" not in first.stderr
    assert str(tmp_path / "cache" / "zoo") in first.stderr and "not found" in first.stderr
    (tmp_path / "cache" / "zoo").mkdir(parents=True)
    shutil.copy(REPO / "model_zoo" / "fmnist-at-dense.safetensors", tmp_path / "cache" / "zoo")
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "sha256 verified" in second.stdout
    assert str(site) in subprocess.run(
        [sys.executable, "-c", "import robustmoe_bench, sys; print(robustmoe_bench.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout  # the wheel, not the tree


@pytest.mark.parametrize("value", [0, -3, True, 2.0, "4", None])
def test_counts_must_be_positive_integers(value):
    from robustmoe_bench.errors import ConfigError, require_positive_int

    with pytest.raises(ConfigError, match=r"^batch size must be a positive integer, got "):
        require_positive_int(value, "batch size")
    require_positive_int(7, "batch size")
    require_positive_int(None, "number of examples", optional=True)


def test_evaluate_refuses_a_bad_batch_size_before_loading_anything(tmp_path):
    from robustmoe_bench.errors import ConfigError
    from robustmoe_bench.evaluation import evaluate

    missing = tmp_path / "no-such-ckpt.pt"  # never opened: the count is checked first
    for kw, msg in [(dict(batch_size=0), "batch size"), (dict(n_examples=False), "number of examples")]:
        with pytest.raises(ConfigError, match=f"{msg} must be a positive integer"):
            evaluate(missing, suite="quick", out=tmp_path / "r.json", progress=False, **kw)
    assert list(tmp_path.iterdir()) == []
