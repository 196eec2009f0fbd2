"""Checkpoints: round trip with metadata, no code execution on load, clear errors and exit code 2."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from robustmoe_bench.checkpoint import load_checkpoint, read_meta, save_checkpoint
from robustmoe_bench.cli import run
from robustmoe_bench.errors import CheckpointError
from robustmoe_bench.models import create_model


@pytest.fixture()
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet-tiny", kind="moe", experts=4, scale=0.25, router="shared", dataset="fashion-mnist")
    model.train()
    model(torch.rand(8, 1, 28, 28))  # move the BN running statistics away from their initial values
    model.eval()
    path = save_checkpoint(tmp_path / "ckpt.pt", model, training={"method": "at-moe", "eps": 0.1, "beta": 6.0})
    return path, model


def test_round_trip_rebuilds_the_model_without_flags(ckpt):
    path, model = ckpt
    loaded = load_checkpoint(path)
    assert loaded.spec == model.spec
    assert loaded.training == {"method": "at-moe", "eps": 0.1, "beta": 6.0}
    meta = read_meta(path)
    assert meta["model"]["experts"] == 4 and meta["model"]["router"] == "shared"
    assert meta["model"]["input_shape"] == [1, 28, 28] and meta["model"]["num_classes"] == 10
    assert meta["package_version"]
    for (k, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), loaded.model(x))
    assert not loaded.model.training


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_a_payload_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": payload}))
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(evil)
    assert not marker.exists()
    # torch.save archives (zip) are refused the same way
    torch.save({"w": torch.zeros(2), "p": payload}, tmp_path / "zip.pt")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(tmp_path / "zip.pt")
    assert not marker.exists()
    assert run(["info", str(evil)]) == 2
    assert not marker.exists()


def test_header_length_ending_in_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """A safetensors header length is little-endian: its first byte is 0x80 for 1 in 256 headers, as
    a pickle's PROTO opcode is. Pad the training metadata until that happens; the file must load."""
    model = create_model("resnet-tiny", kind="dense", dataset="fashion-mnist").eval()
    for pad in range(300):
        path = save_checkpoint(tmp_path / "c.pt", model, training={"note": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length whose first byte is 0x80")
    assert load_checkpoint(path).training == {"note": "x" * pad}


def test_truncated_and_foreign_files_give_exit_code_2(ckpt, tmp_path, capsys):
    path, _ = ckpt
    data = path.read_bytes()
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello, I am not a checkpoint")
    from safetensors.torch import save_file
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    for bad, msg in [(truncated, "corrupt or truncated"), (foreign, "not a robustmoe-bench checkpoint"),
                     (plain, "no metadata"), (tmp_path / "missing.pt", "not found")]:
        capsys.readouterr()
        assert run(["info", str(bad)]) == 2, bad
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
        assert len(err.strip().splitlines()) <= 2  # one line (rich may wrap a long one)


def test_header_cut_inside_is_reported_as_truncated(ckpt, tmp_path):
    path, _ = ckpt
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated"):
        read_meta(cut)


def test_info_json(ckpt, capsys):
    path, model = ckpt
    assert run(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["kind"] == "moe" and info["training"]["method"] == "at-moe"
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["moe_layers"] == 4
