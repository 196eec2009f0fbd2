"""Common corruptions: exact outputs of the deterministic ones on fixed images, properties and
determinism of the random ones, and the corruption suite on a trained tiny MoE (severity makes it worse,
routing changes, JSON keys, CLI errors)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers_topk import train_topk
from robustmoe_bench.cli import run
from robustmoe_bench.data import as_tensors, load_dataset
from robustmoe_bench.data.corruptions import (CORRUPTION_NAMES, CORRUPTIONS, clipped_zoom, corrupt, disk_kernel,
                                              motion_kernels, plasma_fractal)
from robustmoe_bench.errors import ConfigError
from robustmoe_bench.evaluation.corruptions import evaluate_corruptions


def _images(n: int = 8) -> torch.Tensor:
    ds = load_dataset("fashion-mnist", "test")
    return as_tensors(ds, list(range(n)))[0]


def test_fifteen_corruptions_registered():
    assert len(CORRUPTION_NAMES) == 15 and set(CORRUPTIONS.names()) == set(CORRUPTION_NAMES)


def test_brightness_and_contrast_exact():
    x = torch.tensor([[[[0.0, 0.2], [0.5, 0.9]]]])
    # grayscale: HSV value + c, clipped (severity 3: c = 0.15)
    assert torch.allclose(corrupt(x, "brightness", 3), torch.tensor([[[[0.15, 0.35], [0.65, 1.0]]]]))
    # RGB: hue and saturation kept, so each pixel is scaled by V'/V (V = max channel); black -> grey c
    rgb = torch.tensor([0.2, 0.4, 0.0]).view(1, 3, 1, 1).repeat(1, 1, 1, 2)
    rgb[..., 1] = 0.0
    out = corrupt(rgb, "brightness", 5)  # c = 0.3: V 0.4 -> 0.7, scale 1.75
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.35, 0.7, 0.0]))
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([0.3, 0.3, 0.3]))
    # contrast: (x - channel mean) * c + mean (severity 1: c = 0.75, mean 0.4)
    want = (x - 0.4) * 0.75 + 0.4
    assert torch.allclose(corrupt(x, "contrast", 1), want)


def test_kernels_exact():
    k = disk_kernel(0.3, 0.4)  # the disk is the centre pixel; the 3x3 Gaussian (sigma 0.4) spreads it
    g = torch.exp(-0.5 * (torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) / 0.4) ** 2)
    g = g / g.sum()
    assert k.shape == (17, 17) and torch.allclose(k[7:10, 7:10], g.view(-1, 1) * g.view(1, -1))
    assert math.isclose(float(k.sum()), 1.0, rel_tol=1e-9) and float(k[:7].abs().sum()) == 0.0
    m = motion_kernels(3, 1.0, torch.tensor([0.0]))[0]  # angle 0: the centre row, to the right, Gaussian weights
    w = torch.exp(-torch.arange(4, dtype=torch.float64) ** 2 / 2)
    assert torch.allclose(m[3, 3:], w / w.sum()) and float(m.sum() - m[3, 3:].sum()) < 1e-12
    f = plasma_fractal(2, 32, 3.0, torch.Generator().manual_seed(0))
    assert f.shape == (2, 32, 32) and float(f.min()) == 0.0 and float(f.max()) == 1.0
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(clipped_zoom(x, 1.0), x)


def test_noise_exact_given_the_generator():
    x = _images(2)
    g = torch.Generator().manual_seed(5)
    want = (x + 0.08 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    assert torch.equal(corrupt(x, "gaussian_noise", 3, generator=g), want)
    imp = corrupt(x, "impulse_noise", 5, seed=1)
    changed = imp != x
    assert torch.all((imp[changed] == 0) | (imp[changed] == 1))
    assert 0.03 < float(changed.double().mean()) < 0.08  # about 7 % of the pixels (some already 0)


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_every_corruption_shape_range_determinism_rgb_and_gray(name):
    for x in (_images(3), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))):
        a = corrupt(x, name, 3, seed=7)
        b = corrupt(x, name, 3, seed=7)
        assert a.shape == x.shape and a.dtype == x.dtype and float(a.min()) >= 0 and float(a.max()) <= 1
        assert torch.equal(a, b)
        assert float((a - x).abs().mean()) > 1e-3  # it does change the image


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur",
                                  "zoom_blur", "fog", "brightness", "contrast", "jpeg_compression"])
def test_distortion_grows_with_severity(name):
    x = _images(16)
    d = [float((corrupt(x, name, s, seed=3) - x).abs().mean()) for s in range(1, 6)]
    assert all(a < b for a, b in zip(d, d[1:])), d


def test_bad_arguments():
    x = _images(1)
    with pytest.raises(ConfigError, match="unknown corruption 'rain'"):
        corrupt(x, "rain", 1)
    with pytest.raises(ConfigError, match="severity must be 1-5"):
        corrupt(x, "fog", 6)
    with pytest.raises(ConfigError, match=r"\[B, 1 or 3, H, W\]"):
        corrupt(x[0], "fog", 1)


# --------------------------------------------------------------------------- the suite on a trained model
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    return train_topk(tmp_path_factory.mktemp("conv-top2"), moe="conv", k=2, experts=3)


def test_suite_accuracy_falls_with_severity_and_routing_changes(trained, tmp_path):
    out = tmp_path / "c.json"
    res = evaluate_corruptions(str(trained["ckpt"]), data_root=trained["root"], batch_size=100,
                               corruptions=["gaussian_noise", "contrast", "defocus_blur"], severities=[1, 5], out=out)
    assert res.n_examples == 200 and res.clean_acc > 60
    for c in ("gaussian_noise", "contrast", "defocus_blur"):
        assert res.accuracy[c]["5"] < res.accuracy[c]["1"] - 5, res.accuracy
    assert res.by_severity["5"] < res.by_severity["1"]
    cells = [v for row in res.accuracy.values() for v in row.values()]
    assert math.isclose(res.corruptions_acc, sum(cells) / 6)
    # a top-2 gate over 3 experts: corruptions change expert sets, severe ones more often
    assert res.routing_change is not None and res.routing_change["gaussian_noise"]["5"] > res.routing_change["gaussian_noise"]["1"]
    data = json.loads(out.read_text())
    assert data["suite"] == "corruptions" and data["threat_model"] == "corruptions"
    assert data["corruptions_acc"] == res.corruptions_acc and data["model"]["moe"] == "conv"
    iv = data["intervals"]["accuracy"]["contrast"]["5"]
    assert iv["n"] == 200 and iv["low"] <= res.accuracy["contrast"]["5"] <= iv["high"]
    # the same seed gives the same numbers; the per-batch seeds do not depend on which corruptions run
    again = evaluate_corruptions(str(trained["ckpt"]), data_root=trained["root"], batch_size=100,
                                 corruptions=["contrast"], severities=[5])
    assert again.accuracy["contrast"]["5"] == res.accuracy["contrast"]["5"]


def test_cli_corruptions_and_bad_input(trained, tmp_path, capsys):
    out = tmp_path / "r.json"
    base = ["evaluate", str(trained["ckpt"]), "--suite", "corruptions", "--data-root", str(trained["root"]),
            "-n", "50", "--quiet"]
    assert run(base + ["--corruptions", "fog,jpeg_compression", "--severities", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["corruptions"] == ["fog", "jpeg_compression"] and data["severities"] == [2]
    assert "fog" in capsys.readouterr().out
    for extra, needle in ((["--eps", "0.1"], "--eps and --norm do not apply"),
                          (["--corruptions", "rain"], "unknown corruption(s) rain"),
                          (["--severities", "0"], "severities must be among 1-5"),
                          (["--severities", "x"], "comma-separated integers")):
        bad = tmp_path / "bad.json"
        assert run(base + extra + ["--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and not bad.exists()
    assert run(["evaluate", str(trained["ckpt"]), "--suite", "quick", "--severities", "1"]) == 2
    assert "options of --suite corruptions" in capsys.readouterr().err


def test_publish_corruption_entry_and_corruptions_acc_on_an_linf_entry(trained, tmp_path, capsys):
    from test_leaderboard import make_results

    from robustmoe_bench.leaderboard import load_board, validate_root

    corr = tmp_path / "corr.json"
    res = evaluate_corruptions(str(trained["ckpt"]), data_root=trained["root"], n_examples=40,
                               corruptions=["contrast", "fog"], severities=[1, 3], out=corr)
    root = tmp_path / "lb"
    assert run(["leaderboard", "publish", str(corr), "--name", "ConvMoE-top2", "--root", str(root)]) == 0
    entry = json.loads((root / "fashion-mnist" / "corruptions" / "ConvMoE-top2.json").read_text())
    assert entry["corruptions_acc"] == f"{res.corruptions_acc:.2f}" and entry["eps"] is None
    assert entry["clean_acc"] == f"{res.clean_acc:.2f}" and "autoattack_acc" not in entry
    assert entry["architecture"] == "ResNet-tiny ConvMoE (N=3, top-2)"
    assert "2 common corruptions x 2 severities" in entry["footnote"]
    # beside an Linf entry of the same checkpoint (the sha must agree)
    sha = json.loads(corr.read_text())["checkpoint_sha256"]
    linf = tmp_path / "linf.json"
    model = dict(make_results()["model"], arch="resnet-tiny", experts=3, moe="conv", k=2, dataset="fashion-mnist")
    linf.write_text(json.dumps(make_results(dataset="fashion-mnist", eps=0.1, eps_str="0.1", checkpoint_sha256=sha,
                                            model=model)))
    assert run(["leaderboard", "publish", str(linf), "--name", "ConvMoE-top2", "--root", str(root),
                "--corruptions", str(corr)]) == 0
    e2 = json.loads((root / "fashion-mnist" / "Linf" / "ConvMoE-top2.json").read_text())
    assert e2["corruptions_acc"] == f"{res.corruptions_acc:.2f}" and e2["autoattack_acc"] == "57.40"
    assert e2["robustmoe_moe"] == "conv" and e2["robustmoe_k"] == 2
    # the Linf table shows the corruption result and the full-copy design with its k
    from robustmoe_bench.leaderboard import build

    build(root)
    (row,) = [ln for ln in (root / "README.md").read_text().splitlines() if "ConvMoE-top2" in ln and "57.40%" in ln]
    assert f"| {res.corruptions_acc:.2f}% |" in row and "| ConvMoE N=3, top-2 |" in row
    n, problems = validate_root(root)
    assert n == 2 and not [p for p in problems if not p.warning]
    board = load_board(root)
    (rows,) = [v for k, v in board.items() if "corruptions" in str(k)]
    assert [r.entry.corruptions["corruptions_acc"] for r in rows] == [pytest.approx(res.corruptions_acc, abs=0.0051)]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(make_results(dataset="fashion-mnist", eps=0.1, eps_str="0.1", checkpoint_sha256="b" * 64)))
    capsys.readouterr()
    assert run(["leaderboard", "publish", str(other), "--name", "Other", "--root", str(root), "--corruptions", str(corr)]) == 2
    assert "different checkpoint" in capsys.readouterr().err
    assert not (root / "fashion-mnist" / "Linf" / "Other.json").exists()
