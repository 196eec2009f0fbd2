"""The fast AutoAttack engine decides as the reference code does, per example, and leaves the model as
it found it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustmoe_bench.attacks import create_attack
from robustmoe_bench.attacks.autoattack_fast import channels_last_weights, fab_targeted
from robustmoe_bench.errors import ConfigError
from robustmoe_bench.checkpoint import load_checkpoint


ZOO = Path(__file__).resolve().parents[1] / "model_zoo"
#: trained models of the packaged zoo: a Dense one and a routing top-1-of-4 ConvMoE
MODELS = {"dense": "fmnist-at-dense", "moe": "fmnist-advmoe-conv-n4-k1"}


def _model_and_data(kind: str, n: int = 24, seed: int = 0):
    model = load_checkpoint(ZOO / f"{MODELS[kind]}.safetensors").model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed + 1)
    # inputs of varied brightness and contrast, so that the random model predicts several classes
    x = (torch.rand(n, 1, 1, 1, generator=g) * torch.rand(n, 1, 28, 28, generator=g)
         + torch.rand(n, 1, 1, 1, generator=g) * 0.5).clamp(0, 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _fooled(model, x_adv, x, y, eps, norm):
    with torch.no_grad():
        wrong = model(x_adv).argmax(1).ne(y)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    return wrong & (size <= eps + 1e-6)


@pytest.mark.parametrize("kind", ["dense", "moe"])
@pytest.mark.parametrize("norm,eps", [("Linf", 0.05), ("L2", 2.0)])
def test_fab_t_decides_as_pyautoattack_per_example(kind, norm, eps):
    from pyautoattack.fab_pt import FABAttack_PT

    model, x, y = _model_and_data(kind)
    ref = FABAttack_PT(model, norm=norm, n_restarts=1, n_iter=10, eps=eps, targeted=True, n_target_classes=9,
                       seed=0, device=x.device).perturb(x, y)
    ours = fab_targeted(model, x, y, eps=eps, norm=norm, n_iter=10)
    fr, fo = _fooled(model, ref, x, y, eps, norm), _fooled(model, ours, x, y, eps, norm)
    assert 0 < int(fr.sum()) < len(y)  # some examples fooled, some not: the comparison decides something
    assert torch.equal(fr, fo)
    assert torch.equal(ours[~fo], x[~fo])  # nothing found: the clean input comes back


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_fast_autoattack_outcomes_equal_reference_per_example(kind):
    model, x, y = _model_and_data(kind)
    eps = 0.05
    kw = dict(n_iter=10, n_queries=100, seed=0)
    ref = create_attack("autoattack", eps, engine="reference", **kw)(model, x, y)
    fast = create_attack("autoattack", eps, engine="fast", **kw)(model, x, y)
    fr, ff = _fooled(model, ref, x, y, eps, "Linf"), _fooled(model, fast, x, y, eps, "Linf")
    assert 0 < int(fr.sum()) < len(y)
    assert torch.equal(fr, ff)


def test_channels_last_weights_are_restored():
    model, x, _ = _model_and_data("moe", n=4)
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(x)
    with channels_last_weights(model) as fast:
        assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                   and not p.is_contiguous() for p in model.parameters())
        with torch.no_grad():
            assert torch.allclose(fast(x), plain, atol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.stride() == before[k][1], k


def test_unknown_engine_is_refused():
    with pytest.raises(ConfigError, match="engine must be one of fast, reference"):
        create_attack("autoattack", 0.1, engine="quick")


def test_cli_refuses_an_unknown_engine_in_one_line(tmp_path, capsys):
    from robustmoe_bench.cli import run

    out = tmp_path / "r.json"
    rc = run(["evaluate", str(ZOO / "fmnist-at-dense.safetensors"), "--suite", "autoattack", "-n", "2",
              "--autoattack", "quick", "--out", str(out), "--quiet"])
    _, err = capsys.readouterr()
    assert rc == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "--autoattack must be one of fast, reference" in lines[0]
    assert not out.exists()
