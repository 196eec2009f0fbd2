"""Data loaders: tiny files in each on-disk layout, read back through the real code."""
from __future__ import annotations

import gzip
import os
import pickle
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from robustmoe_bench.config import parse_eps
from robustmoe_bench.data import (
    DATA_ENV,
    DatasetInfo,
    InMemoryImageDataset,
    as_tensors,
    class_balanced_subset,
    dataset_labels,
    dataset_names,
    get_dataset_info,
    load_dataset,
    random_crop_flip,
    subset_indices,
)
from robustmoe_bench.errors import DataError

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------ file builders

def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def make_fmnist(folder: Path, n_train: int = 3, n_test: int = 2, gz: bool = True) -> dict[str, tuple]:
    """IDX files with known pixels; train gzipped, test plain when ``gz`` is False."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = ((np.arange(n * 28 * 28) * 7 + len(prefix)) % 256).astype(np.uint8).reshape(n, 28, 28)
        labels = (np.arange(n) * 3 + 1) % 10
        for stem, magic, arr in (
            (f"{prefix}-images-idx3-ubyte", 2051, images),
            (f"{prefix}-labels-idx1-ubyte", 2049, labels),
        ):
            data = idx_bytes(magic, arr)
            if gz and split == "train":
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)
        out[split] = (images, labels)
    return out


class Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``bytes`` as Python-2 ``str`` opcodes, as the published CIFAR batches (made with Python 2) do."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    import io

    buf = io.BytesIO()
    Py2StylePickler(buf, protocol=2).dump(obj)
    # The originals name numpy's reconstructor under numpy.core (numpy >= 2 writes numpy._core).
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def make_cifar10(root: Path, per_batch: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    names = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
    for k, (name, split) in enumerate(names):
        data = cifar_rows(per_batch, k)
        labels = [(k + j) % 10 for j in range(per_batch)]
        batch = {b"batch_label": b"batch", b"labels": labels, b"data": data,
                 b"filenames": [b"f%d.png" % j for j in range(per_batch)]}
        (folder / name).write_bytes(py2_pickle(batch))
        out[split][0].append(data)
        out[split][1].extend(labels)
    return {s: (np.concatenate(d), lab) for s, (d, lab) in out.items()}


def make_cifar100(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Re-saved with Python 3's default protocol (numpy arrays via _frombuffer) and bytes keys."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for k, split in enumerate(("train", "test")):
        data = cifar_rows(3, 10 + k)
        fine, coarse = [99, 0, 42 + k], [19, 0, 1]
        batch = {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse, b"filenames": [b"a", b"b", b"c"]}
        (folder / split).write_bytes(pickle.dumps(batch))
        out[split] = (data, fine)
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}))
    return out


def save_jpeg(path: Path, color: tuple[int, int, int] | int, size: tuple[int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format="JPEG", quality=100)


def make_tinyimagenet(root: Path) -> None:
    wnids = ["n02000002", "n01000001"]  # deliberately unsorted: index follows sorted order
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    save_jpeg(root / "train/n01000001/images/n01000001_0.JPEG", (250, 10, 10), (64, 64))
    save_jpeg(root / "train/n01000001/images/n01000001_1.JPEG", (10, 250, 10), (64, 64))
    save_jpeg(root / "train/n02000002/images/n02000002_0.JPEG", 128, (64, 64), mode="L")  # greyscale
    (root / "train/n02000002/n02000002_boxes.txt").write_text("n02000002_0.JPEG\t0\t0\t63\t63\n")
    save_jpeg(root / "val/images/val_0.JPEG", (10, 10, 250), (64, 64))
    save_jpeg(root / "val/images/val_1.JPEG", (200, 200, 200), (64, 64))
    (root / "val/val_annotations.txt").write_text(
        "val_0.JPEG\tn02000002\t0\t0\t63\t63\nval_1.JPEG\tn01000001\t1\t2\t60\t61\n"
    )


def make_imagenet(root: Path) -> None:
    for split in ("train", "val"):
        save_jpeg(root / split / "tench" / "a.JPEG", (240, 20, 20), (300, 260))
        save_jpeg(root / split / "goldfish" / "b.JPEG", (20, 240, 20), (260, 300))
        save_jpeg(root / split / "goldfish" / "c.jpeg", (20, 20, 240), (256, 256))
    (root / "train" / "goldfish" / "notes.txt").write_text("not an image")


# ------------------------------------------------------------------ registry / info

def test_registry_and_info() -> None:
    assert dataset_names() == ["cifar10", "cifar100", "fashion-mnist", "imagenet", "tinyimagenet"]
    expected = {
        "fashion-mnist": (10, (1, 28, 28), "0.1", "cifar", None),
        "cifar10": (10, (3, 32, 32), "8/255", "cifar", "cifar10"),
        "cifar100": (100, (3, 32, 32), "8/255", "cifar", "cifar100"),
        "tinyimagenet": (200, (3, 64, 64), "2/255", "cifar", None),
        "imagenet": (1000, (3, 224, 224), "2/255", "imagenet", "imagenet"),
    }
    for name, (classes, shape, eps_str, stem, rb) in expected.items():
        info = get_dataset_info(name)
        assert isinstance(info, DatasetInfo)
        assert (info.num_classes, info.input_shape, info.eps_str, info.stem, info.robustbench_name) == (
            classes, shape, eps_str, stem, rb)
        assert info.eps == parse_eps(eps_str)
        assert len(info.mean) == len(info.std) == shape[0]
    assert get_dataset_info("fashion-mnist").default_root == str(DEBIAN_FMNIST)
    assert get_dataset_info("fashion-mnist").mean == (0.2860,)
    assert get_dataset_info("cifar10").default_root == "~/data/cifar10"


def test_unknown_name_and_split() -> None:
    with pytest.raises(DataError, match="known: cifar10, cifar100, fashion-mnist, imagenet, tinyimagenet"):
        get_dataset_info("mnist")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("cifar10", "val", root="/nonexistent")
    with pytest.raises(DataError, match="train split only"):
        load_dataset("cifar10", "test", root="/nonexistent", augment=True)


# ------------------------------------------------------------------ Fashion-MNIST / IDX

def test_fmnist_idx_exact_pixels_gz_and_plain(tmp_path: Path) -> None:
    made = make_fmnist(tmp_path)
    for split in ("train", "test"):  # train from .gz, test from plain files
        images, labels = made[split]
        ds = load_dataset("fashion-mnist", split, root=tmp_path)
        assert isinstance(ds, InMemoryImageDataset)
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(labels), 1, 28, 28)
        assert ds.labels.dtype == torch.long and ds.labels.tolist() == labels.tolist()
        assert len(ds) == len(labels)
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
            assert torch.equal(x, torch.from_numpy(images[i]).float()[None] / 255)
            assert isinstance(y, int) and y == labels[i]


def test_fmnist_missing_names_path_and_package(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "test", root=missing)
    msg = str(err.value)
    assert "\n" not in msg and str(missing) in msg
    assert "t10k-images-idx3-ubyte" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_idx_truncated_corrupt_and_inconsistent(tmp_path: Path) -> None:
    make_fmnist(tmp_path, gz=False)
    images_file = tmp_path / "t10k-images-idx3-ubyte"
    good = images_file.read_bytes()

    images_file.write_bytes(good[:-10])  # body shorter than the header promises
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset("fashion-mnist", "test", root=tmp_path)
    assert str(images_file) in str(err.value)

    images_file.write_bytes(struct.pack(">I", 2049) + good[4:])  # labels magic on an images file
    with pytest.raises(DataError, match="magic"):
        load_dataset("fashion-mnist", "test", root=tmp_path)

    labels_file = tmp_path / "t10k-labels-idx1-ubyte"
    images_file.write_bytes(good)
    labels_file.write_bytes(idx_bytes(2049, np.array([1, 2, 3])))  # 3 labels for 2 images
    with pytest.raises(DataError, match="2 images .* but 3 labels"):
        load_dataset("fashion-mnist", "test", root=tmp_path)

    # a cut-off gzip stream
    gz_file = tmp_path / "train-images-idx3-ubyte"
    gz_data = gzip.compress(gz_file.read_bytes())
    gz_file.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gz_data[: len(gz_data) // 2])
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "train", root=tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(err.value)


@pytest.mark.skipif(not DEBIAN_FMNIST.is_dir(), reason=f"{DEBIAN_FMNIST} absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_test_split() -> None:
    ds = load_dataset("fashion-mnist", "test")
    assert len(ds) == 10000 == get_dataset_info("fashion-mnist").test_size
    assert ds.images.shape == (10000, 1, 28, 28)
    assert sorted(ds.labels.unique().tolist()) == list(range(10))
    assert torch.equal(ds.labels.bincount(), torch.full((10,), 1000))
    x, _ = ds[0]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


# ------------------------------------------------------------------ CIFAR

def check_cifar(ds: InMemoryImageDataset, rows: np.ndarray, labels: list[int]) -> None:
    assert ds.images.shape == (len(labels), 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == labels
    for i in (0, len(labels) - 1):
        x, y = ds[i]
        assert x.dtype == torch.float32 and y == labels[i]
        # channel-major planes: byte c*1024 + h*32 + w is pixel (c, h, w)
        for c, h, w in ((0, 0, 0), (1, 5, 7), (2, 31, 31), (2, 0, 31)):
            assert x[c, h, w].item() == pytest.approx(rows[i, c * 1024 + h * 32 + w] / 255, abs=1e-7)
        assert torch.equal(ds.images[i].flatten(), torch.from_numpy(rows[i]))


def test_cifar10_python2_batches_parent_or_folder(tmp_path: Path) -> None:
    made = make_cifar10(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        train = load_dataset("cifar10", "train", root=root)
        test = load_dataset("cifar10", "test", root=root)
        check_cifar(train, *made["train"])  # type: ignore[arg-type]
        check_cifar(test, *made["test"])  # type: ignore[arg-type]
    assert len(train) == 10 and train.classes[0] == "airplane"


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    made = make_cifar100(tmp_path)
    for split in ("train", "test"):
        ds = load_dataset("cifar100", split, root=tmp_path)
        check_cifar(ds, *made[split])  # type: ignore[arg-type]
    assert ds.classes is not None and ds.classes[99] == "c99"


def test_cifar_missing_and_incomplete(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "test", root=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "CIFAR10" in msg and "download=True" in msg
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 missing"):
        load_dataset("cifar10", "train", root=tmp_path)


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_cifar_refuses_malicious_pickle(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    payload = {b"data": Evil(marker), b"labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match="refusing to load global") as err:
        load_dataset("cifar10", "test", root=tmp_path)
    assert str(folder / "test_batch") in str(err.value)
    assert not marker.exists()
    # a batch of the wrong shape is refused after loading
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"uint8 array \[N, 3072\]"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_data_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = make_cifar10(tmp_path / "cifar10")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    ds = load_dataset("cifar10", "test")
    assert ds.labels.tolist() == made["test"][1]
    with pytest.raises(DataError, match=str(tmp_path / "cifar100")):
        load_dataset("cifar100", "test")


# ------------------------------------------------------------------ augmentation

def test_random_crop_flip_is_a_padded_crop() -> None:
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).reshape(2, 3, 6, 5) + 1
    assert torch.equal(random_crop_flip(x, 0, False), x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    g = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(20):
        out = random_crop_flip(x, 2, True, generator=g)
        assert out.shape == x.shape
        for b in range(2):
            matches = [(oy, ox, f) for oy in range(5) for ox in range(5) for f in (False, True)
                       if torch.equal(out[b], (lambda c: c.flip(-1) if f else c)(padded[b, :, oy:oy + 6, ox:ox + 5]))]
            assert matches, "output is not a crop (optionally mirrored) of the padded input"
            seen.add(matches[0])
    assert len(seen) > 5 and any(f for _, _, f in seen)


def test_in_memory_augment_and_batch(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    ds = load_dataset("cifar10", "train", root=tmp_path, augment=True)
    assert (ds.pad, ds.flip) == (4, True)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    xb, yb = ds.batch([0, 3], generator=torch.Generator().manual_seed(0))
    assert xb.shape == (2, 3, 32, 32) and yb.tolist() == [ds[0][1], ds[3][1]]
    fm = make_fmnist(tmp_path / "fm")
    fds = load_dataset("fashion-mnist", "train", root=tmp_path / "fm", augment=True)
    assert (fds.pad, fds.flip) == (2, False)
    assert fds[0][0].shape == (1, 28, 28) and fm["train"][0].shape[0] == len(fds)


# ------------------------------------------------------------------ TinyImageNet / ImageNet

def test_tinyimagenet_layout(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    make_tinyimagenet(root)
    for r in (root, tmp_path):  # the unzipped folder or its parent
        train = load_dataset("tinyimagenet", "train", root=r)
        assert train.classes == ["n01000001", "n02000002"]
        assert train.targets == [0, 0, 1]
    colors = [(250, 10, 10), (10, 250, 10), (128, 128, 128)]
    for i, color in enumerate(colors):
        x, y = train[i]
        assert x.dtype == torch.float32 and x.shape == (3, 64, 64) and y == train.targets[i]
        assert 0 <= float(x.min()) and float(x.max()) <= 1
        assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(color) / 255, atol=3 / 255)
    test = load_dataset("tinyimagenet", "test", root=root)
    assert test.targets == [1, 0]
    x, y = test[0]
    assert y == 1 and torch.allclose(x.mean(dim=(1, 2)), torch.tensor([10, 10, 250]) / 255, atol=3 / 255)
    aug = load_dataset("tinyimagenet", "train", root=root, augment=True)
    assert aug[0][0].shape == (3, 64, 64)


def test_tinyimagenet_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="wnids.txt") as err:
        load_dataset("tinyimagenet", "test", root=tmp_path / "x")
    assert str(tmp_path / "x") in str(err.value) and "val_annotations.txt" in str(err.value)
    make_tinyimagenet(tmp_path / "t")
    ann = tmp_path / "t/val/val_annotations.txt"
    ann.write_text("val_0.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="val_annotations.txt:1"):
        load_dataset("tinyimagenet", "test", root=tmp_path / "t")


def test_imagenet_class_folders(tmp_path: Path) -> None:
    make_imagenet(tmp_path)
    for split in ("train", "test"):
        ds = load_dataset("imagenet", split, root=tmp_path)
        assert ds.classes == ["goldfish", "tench"]
        assert ds.targets == [0, 0, 1]  # notes.txt is not an image
        for i, color in enumerate([(20, 240, 20), (20, 20, 240), (240, 20, 20)]):
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (3, 224, 224) and y == ds.targets[i]
            assert 0 <= float(x.min()) and float(x.max()) <= 1
            assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(color) / 255, atol=3 / 255)
    aug = load_dataset("imagenet", "train", root=tmp_path, augment=True)
    assert aug[0][0].shape == (3, 224, 224)
    with pytest.raises(DataError) as err:
        load_dataset("imagenet", "test", root=tmp_path / "none")
    assert str(tmp_path / "none" / "val") in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------ tensors and sampling

def test_as_tensors_fast_path_folder_path_and_subset(tmp_path: Path) -> None:
    made = make_cifar10(tmp_path / "c")
    ds = load_dataset("cifar10", "train", root=tmp_path / "c")
    x, y = as_tensors(ds, torch.tensor([4, 1]))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal(x[0], ds[4][0]) and y.tolist() == [made["train"][1][4], made["train"][1][1]]
    x_all, y_all = as_tensors(ds)
    assert x_all.shape[0] == 10 and torch.equal(y_all, ds.labels)
    sub = Subset(ds, [7, 2, 5])
    xs, ys = as_tensors(sub, [2, 0])
    assert torch.equal(xs[0], ds[5][0]) and torch.equal(xs[1], ds[7][0])
    assert torch.equal(dataset_labels(sub), ds.labels[[7, 2, 5]])

    make_tinyimagenet(tmp_path / "t")
    tds = load_dataset("tinyimagenet", "train", root=tmp_path / "t")
    xt, yt = as_tensors(tds, [2, 0])
    assert xt.shape == (2, 3, 64, 64) and yt.tolist() == [1, 0]
    assert torch.equal(xt[1], tds[0][0])
    assert dataset_labels(tds).tolist() == [0, 0, 1]


def test_subset_indices() -> None:
    a = subset_indices(1000, 50, seed=3)
    assert a.dtype == torch.long and a.shape == (50,)
    assert torch.equal(a, subset_indices(1000, 50, seed=3))
    assert not torch.equal(a, subset_indices(1000, 50, seed=4))
    assert a.unique().numel() == 50 and int(a.min()) >= 0 and int(a.max()) < 1000
    assert set(a.tolist()) <= set(subset_indices(1000, 80, seed=3).tolist())
    assert torch.equal(subset_indices(5, 5, seed=0), torch.arange(5))
    with pytest.raises(DataError, match="only 5"):
        subset_indices(5, 6, seed=0)


def test_class_balanced_subset() -> None:
    labels = torch.tensor([0, 1, 2] * 10 + [2] * 5)
    idx = class_balanced_subset(labels, 4, seed=0)
    assert torch.equal(labels[idx].bincount(), torch.tensor([4, 4, 4]))
    assert torch.equal(idx, class_balanced_subset(labels, 4, seed=0))
    with pytest.raises(DataError, match="class 0 has only 10"):
        class_balanced_subset(labels, 11, seed=0)
