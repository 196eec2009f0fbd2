"""Pathway IoU against a Sparse mask and expert utilisation: brute force, a crafted model, the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from robustmoe_bench.analysis.iou import IoUResult, iou_analysis, masked_convs, match_layers, pathway_iou
from robustmoe_bench.checkpoint import save_checkpoint
from robustmoe_bench.cli import run
from robustmoe_bench.errors import ModelError
from robustmoe_bench.models import ModelSpec, build_model, create_model
from test_dissect import png_size, C, LAYERS, Shift, crafted_data, crafted_model, write_fmnist


def sparse_twin(spec: ModelSpec, keep_first_half: bool = True) -> torch.nn.Module:
    """The Sparse model of ``spec``'s backbone; masks keep the first half of each layer's channels."""
    s = build_model(ModelSpec(**{**spec.to_dict(), "kind": "sparse"}))
    if keep_first_half:
        for _, conv in masked_convs(s):
            m = conv.channel_mask.mask
            m.zero_()
            m[: m.numel() // 2] = 1.0
    return s.eval()


def test_pathway_iou_equals_brute_force_sets() -> None:
    g = torch.Generator().manual_seed(3)
    widths = torch.tensor([4, 4, 8, 8])  # channels per expert, N = 2
    masks = [torch.randperm(2 * int(w), generator=g)[: int(w)] for w in widths]  # kept channel ids per layer
    kept = torch.stack([torch.bincount(m // int(w), minlength=2) for m, w in zip(masks, widths)])
    experts = torch.randint(0, 2, (4, 50), generator=g)
    got = pathway_iou(experts, kept, widths, kept.sum(1))
    offsets = [0] + torch.cumsum(2 * widths, 0).tolist()[:-1]
    mask_set = {o + int(c) for o, m in zip(offsets, masks) for c in m}
    for b in range(50):
        path = {offsets[l] + int(experts[l, b]) * int(widths[l]) + k for l in range(4) for k in range(int(widths[l]))}
        assert float(got[b]) == pytest.approx(len(path & mask_set) / len(path | mask_set))


def test_crafted_model_known_iou_and_utilisation() -> None:
    moe = crafted_model()
    sparse = sparse_twin(moe.spec)
    names, kept = match_layers(moe, sparse)
    assert names == LAYERS
    assert kept.tolist() == [[4, 0], [4, 0], [8, 0], [8, 0]]  # the mask is expert 0's slice everywhere
    x, y = crafted_data()
    atk = Shift(+0.2)
    r = iou_analysis(moe, sparse, x, y, attack=atk, eps=0.2, batch_size=5)
    assert atk.calls == 3 and atk.seen == 12  # one attack pass, reused for utilisation

    # pathway 24 channels, mask 24; layer 0.conv1 on expert 1 (c > 0.5) moves 4 channels out of the mask,
    # layer 1.conv1 on expert 1 (c > 0.7) 8 more
    def expected(c: float) -> float:
        inter = 24 - 4 * (c > 0.5) - 8 * (c > 0.7)
        return inter / (48 - inter)

    assert (r.pathway_channels, r.mask_channels) == (24, 24)
    assert r.clean == pytest.approx([expected(c) for c in C])
    assert r.adversarial == pytest.approx([expected(min(c + 0.2, 1.0)) for c in C])
    assert r.summary["clean"]["mean"] == pytest.approx(np.mean(r.clean))
    assert r.summary["adversarial"]["min"] == pytest.approx(1 / 3)

    # utilisation: clean, 3 of 12 inputs on expert 1 in layer 0.conv1, 2 of 12 in layer 1.conv1
    u = r.utilisation["clean"]
    assert u.share[0] == pytest.approx([9 / 12, 3 / 12]) and u.share[2] == pytest.approx([10 / 12, 2 / 12])
    assert u.share[1] == [1.0, 0.0] and u.share[3] == [1.0, 0.0]
    h = lambda p: -(p * math.log2(p) + (1 - p) * math.log2(1 - p))  # noqa: E731
    assert u.entropy_bits == pytest.approx([h(3 / 12), 0.0, h(2 / 12), 0.0])
    ua = r.utilisation["adversarial"]  # adversarial intensities: 8 above 0.5, 3 above 0.7
    assert ua.share[0] == pytest.approx([4 / 12, 8 / 12]) and ua.share[2] == pytest.approx([9 / 12, 3 / 12])
    assert r.max_entropy_bits == 1.0
    assert r.routing_change_rate == pytest.approx(100 * 6 / 12)

    hist = r.histogram
    assert sum(hist["clean"]) == 12 and sum(hist["adversarial"]) == 12
    assert hist["clean"] == np.histogram(r.clean, bins=hist["edges"])[0].tolist()


def test_mismatches_are_clear_errors() -> None:
    moe4 = create_model("resnet-tiny", kind="moe", experts=4, scale=0.5, dataset="fashion-mnist")
    sparse = create_model("resnet-tiny", kind="sparse", scale=0.5, dataset="fashion-mnist")
    with pytest.raises(ModelError, match=r"body\.layers\.0\.conv1.* 16 channels .* Sparse layer 8"):
        match_layers(moe4, sparse)
    moe = create_model("resnet-tiny", kind="moe", dataset="fashion-mnist")
    with pytest.raises(ModelError, match="backbones differ.*resnet-tiny.*vgg-mini"):
        match_layers(moe, create_model("vgg-mini", kind="sparse", dataset="fashion-mnist"))
    with pytest.raises(ModelError, match="must be a 'sparse'"):
        match_layers(moe, create_model("resnet-tiny", kind="dense", dataset="fashion-mnist"))
    with pytest.raises(ModelError, match="needs an MoE model"):
        match_layers(sparse, sparse)


def test_json_round_trip(tmp_path: Path) -> None:
    moe = crafted_model()
    r = iou_analysis(moe, sparse_twin(moe.spec), *crafted_data(), attack=Shift(0.1), eps=0.2)
    back = IoUResult.from_dict(json.loads(r.save(tmp_path / "iou.json").read_text()))
    assert back.clean == r.clean and back.utilisation["adversarial"].share == r.utilisation["adversarial"].share
    assert back.schema_version == 1


def test_cli_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(1)
    moe = create_model("resnet-tiny", kind="moe", dataset="fashion-mnist")
    sparse = create_model("resnet-tiny", kind="sparse", dataset="fashion-mnist")
    for _, conv in masked_convs(sparse):
        conv.channel_mask.init_from_weight(conv.weight)  # a Hydra-style magnitude mask
    a = save_checkpoint(tmp_path / "moe.safetensors", moe)
    b = save_checkpoint(tmp_path / "sparse.safetensors", sparse)
    data = tmp_path / "fm"
    write_fmnist(data, n_test=12)
    out = tmp_path / "out"
    rc = run(["iou", str(a), "--mask", str(b), "--n-examples", "10", "--attack", "pgd2", "--data-root", str(data),
              "--out", str(out)])
    assert rc == 0
    d = json.loads((out / "iou.json").read_text())
    assert len(d["clean"]) == len(d["adversarial"]) == 10 and d["attack"] == "pgd-2"
    assert d["checkpoint"] == str(a) and d["mask_checkpoint"] == str(b)
    for key in ("clean", "adversarial"):
        assert d["summary"][key]["mean"] == pytest.approx(float(np.mean(d[key])))
        assert d["histogram"][key] == np.histogram(d[key], bins=d["histogram"]["edges"])[0].tolist()
        for shares in d["utilisation"][key]["share"]:
            assert sum(shares) == pytest.approx(1.0)
    for png in ("iou.png", "utilisation.png"):
        w, h = png_size(out / png)
        assert w >= 400 and h >= 250


def test_cli_mismatch_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = save_checkpoint(tmp_path / "moe.safetensors",
                        create_model("resnet-tiny", kind="moe", experts=4, dataset="fashion-mnist"))
    b = save_checkpoint(tmp_path / "sparse.safetensors", create_model("resnet-tiny", kind="sparse", dataset="fashion-mnist"))
    rc = run(["iou", str(a), "--mask", str(b), "--out", str(tmp_path / "o"), "--data-root", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2 and "body.layers.0.conv1" in err and "16" in err and "8" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
