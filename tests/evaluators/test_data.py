"""Loaders parse small files written in the real on-disk formats and reject corrupt ones."""

from __future__ import annotations

import gzip
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.errors import DataError, UnknownNameError
from edgecompress.evaluators.data import (
    FMNIST_FILES,
    fmnist_candidates,
    fmnist_folder,
    list_datasets,
    load_data,
    read_idx,
)
from edgecompress.evaluators.splits import calibration_batches, make_loader
from edgecompress.spaces.experiment import DatasetConfig


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def make_fmnist(root: Path, n_train: int = 50, n_test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, n_test),
    }
    root.mkdir(parents=True, exist_ok=True)
    for k, f in FMNIST_FILES.items():
        write_idx(root / f, arrays[k])
    return arrays


def test_registry_lists_the_three_formats() -> None:
    assert {"fashion_mnist", "cifar10", "imagefolder"} <= set(list_datasets())


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="valid: .*fashion_mnist"):
        load_data(DatasetConfig(name="mnistt"))


def test_fmnist_idx_round_trip(tmp_path: Path) -> None:
    arrays = make_fmnist(tmp_path)
    bundle = load_data(DatasetConfig(root=str(tmp_path), val_fraction=0.2), seed=1)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (40, 10, 20)
    assert bundle.in_chans == 1 and bundle.native_size == 28 and bundle.num_classes == 10
    # the test split is exactly the t10k file, in order
    assert torch.equal(bundle.test.labels, torch.from_numpy(arrays["test_labels"].astype(np.int64)))
    assert torch.equal(bundle.test.images[:, 0], torch.from_numpy(arrays["test_images"].astype(np.uint8)))
    # train and val partition the training file
    all_train = sorted(bundle.train.labels.tolist() + bundle.val.labels.tolist())
    assert all_train == sorted(arrays["train_labels"].tolist())


def test_split_is_seeded(tmp_path: Path) -> None:
    make_fmnist(tmp_path)
    cfg = DatasetConfig(root=str(tmp_path), val_fraction=0.2)
    a, b, c = load_data(cfg, 0), load_data(cfg, 0), load_data(cfg, 1)
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)


@pytest.mark.parametrize("size", [14, 28, 32])
def test_loader_resizes_to_requested_resolution(tmp_path: Path, size: int) -> None:
    make_fmnist(tmp_path)
    bundle = load_data(DatasetConfig(root=str(tmp_path)), 0)
    x, y = next(iter(make_loader(bundle.train, size, 16, shuffle=True, augment=True)))
    assert x.shape == (16, 1, size, size) and x.dtype == torch.float32 and len(y) == 16
    assert torch.isfinite(x).all()


def test_truncated_idx_names_file(tmp_path: Path) -> None:
    make_fmnist(tmp_path)
    target = tmp_path / FMNIST_FILES["train_images"]
    raw = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: truncated"):
        load_data(DatasetConfig(root=str(tmp_path)), 0)


def test_bad_magic_names_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x12\x34\x08\x03" + b"\0" * 40)
    with pytest.raises(DataError, match="x.gz: not an IDX"):
        read_idx(path, 3)


def test_label_count_mismatch(tmp_path: Path) -> None:
    make_fmnist(tmp_path)
    write_idx(tmp_path / FMNIST_FILES["test_labels"], np.zeros(7))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: 7 labels for 20 images"):
        load_data(DatasetConfig(root=str(tmp_path)), 0)


def test_missing_fmnist_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset.root .*nowhere: folder not found"):
        load_data(DatasetConfig(root=str(tmp_path / "nowhere")), 0)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DataError, match=r"dataset.root .*a-file: not a folder"):
        load_data(DatasetConfig(root=str(tmp_path / "a-file")), 0)
    with pytest.raises(DataError, match="Fashion-MNIST not found"):  # a folder, but no data in it
        load_data(DatasetConfig(root=str(tmp_path)), 0)


def test_fmnist_folder_is_where_the_loader_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fmnist_folder (what the tests use instead of a hard-coded path) follows the loader's own search:
    under a root, the root itself or torchvision's download layout; else $EDGECOMPRESS_DATA first."""
    assert fmnist_folder(tmp_path) is None
    make_fmnist(tmp_path / "FashionMNIST" / "raw")  # `edgecompress download` / `make data` fallback layout
    assert fmnist_folder(tmp_path) == tmp_path / "FashionMNIST" / "raw"
    assert len(load_data(DatasetConfig(root=str(tmp_path), val_fraction=0.2), 0).test) == 20
    make_fmnist(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("EDGECOMPRESS_DATA", str(tmp_path / "data"))
    assert fmnist_folder() == tmp_path / "data" / "fashion-mnist"
    assert fmnist_candidates(None)[-1] == tmp_path / "data" / "FashionMNIST" / "raw"  # `download`'s layout
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))  # the writable cache is never searched
    assert not any(str(c).startswith(str(tmp_path / "cache")) for c in fmnist_candidates(None))


# ---- CIFAR-10 ----------------------------------------------------------------------------------
def make_cifar(root: Path, per_batch: int = 6) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
             b"labels": rng.integers(0, 10, per_batch).tolist(), b"batch_label": name.encode()}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return folder


def test_cifar_pickles(tmp_path: Path) -> None:
    folder = make_cifar(tmp_path)
    bundle = load_data(DatasetConfig(name="cifar10", root=str(tmp_path), val_fraction=0.2), 0)
    assert len(bundle.train) + len(bundle.val) == 30 and len(bundle.test) == 6
    assert bundle.classes == [f"c{i}" for i in range(10)] and bundle.in_chans == 3
    # row-major RGB: the first 1024 bytes are the red plane of image 0
    with open(folder / "test_batch", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    assert torch.equal(bundle.test.images[0, 0].flatten(), torch.from_numpy(d[b"data"][0, :1024]))
    x, _ = next(iter(make_loader(bundle.train, 24, 4)))
    assert x.shape == (4, 3, 24, 24)


def test_cifar_truncated_pickle(tmp_path: Path) -> None:
    folder = make_cifar(tmp_path)
    blob = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(blob[:100])
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR pickle"):
        load_data(DatasetConfig(name="cifar10", root=str(tmp_path)), 0)


def test_cifar_wrong_shape(tmp_path: Path) -> None:
    folder = make_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="test_batch: b'data' must be uint8 N x 3072"):
        load_data(DatasetConfig(name="cifar10", root=str(tmp_path)), 0)


# ---- ImageNet-style folders --------------------------------------------------------------------
def make_folders(root: Path, classes: tuple[str, ...] = ("n01440764", "n01443537")) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (40 + i, 50, 3)).astype(np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{c}_{i}.JPEG", format="JPEG")


def test_imagefolder(tmp_path: Path) -> None:
    make_folders(tmp_path)
    bundle = load_data(DatasetConfig(name="imagefolder", root=str(tmp_path), val_fraction=0.25), 0)
    assert bundle.classes == ["n01440764", "n01443537"]
    assert len(bundle.train) == 6 and len(bundle.val) == 2 and len(bundle.test) == 4
    assert bundle.test.labels.tolist() == [0, 0, 1, 1]
    x, _ = next(iter(make_loader(bundle.test, 32, 4)))
    assert x.shape == (4, 3, 32, 32) and torch.isfinite(x).all()


def test_imagefolder_corrupt_image_names_file(tmp_path: Path) -> None:
    make_folders(tmp_path)
    bad = tmp_path / "val" / "n01443537" / "n01443537_1.JPEG"
    bad.write_bytes(b"not a jpeg")
    bundle = load_data(DatasetConfig(name="imagefolder", root=str(tmp_path)), 0)
    with pytest.raises(DataError, match="n01443537_1.JPEG: cannot decode image"):
        list(make_loader(bundle.test, 32, 4))


def test_imagefolder_mismatched_classes(tmp_path: Path) -> None:
    make_folders(tmp_path)
    (tmp_path / "val" / "n99999999").mkdir()
    shutil.copy(next((tmp_path / "val" / "n01440764").iterdir()), tmp_path / "val" / "n99999999" / "x.JPEG")
    with pytest.raises(DataError, match="class folders differ"):
        load_data(DatasetConfig(name="imagefolder", root=str(tmp_path)), 0)


def test_calibration_batches_are_a_seeded_draw(tmp_path: Path) -> None:
    make_fmnist(tmp_path / "fm", n_train=300)
    data = load_data(DatasetConfig(root=str(tmp_path / "fm"), val_fraction=0.1))
    a = calibration_batches(data.train, 14, seed=3)
    assert len(a) == 8 and all(b.shape == (32, 1, 14, 14) for b in a)
    b = calibration_batches(data.train, 14, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], calibration_batches(data.train, 14, seed=4)[0])
    small = calibration_batches(data.train, 14, seed=3, n=2, batch_size=5)
    assert [len(x) for x in small] == [5, 5]


# ---- each loader follows its stated preprocessing (runtime.preprocess.Preprocess), so they cannot drift ------
@pytest.mark.parametrize("size", [14, 28, 32])
def test_fmnist_loader_is_its_stated_preprocessing(tmp_path: Path, size: int) -> None:
    arrays = make_fmnist(tmp_path)
    bundle = load_data(DatasetConfig(root=str(tmp_path)), 0)
    assert bundle.preprocess is not None and bundle.preprocess.dataset == "fashion_mnist"
    x = bundle.test.batch(torch.arange(5), size).numpy()
    stated = np.stack([bundle.preprocess.apply(arrays["test_images"][i].astype(np.uint8), size) for i in range(5)])
    assert np.abs(x - stated).max() < 1e-4


@pytest.mark.parametrize("size", [24, 32, 40])
def test_cifar_loader_is_its_stated_preprocessing(tmp_path: Path, size: int) -> None:
    folder = make_cifar(tmp_path)
    bundle = load_data(DatasetConfig(name="cifar10", root=str(tmp_path)), 0)
    with open(folder / "test_batch", "rb") as f:
        rows = pickle.load(f, encoding="bytes")[b"data"]
    stated = np.stack([bundle.preprocess.apply(r.reshape(3, 32, 32).transpose(1, 2, 0), size) for r in rows])
    assert np.abs(bundle.test.batch(torch.arange(len(rows)), size).numpy() - stated).max() < 1e-4


@pytest.mark.parametrize("size", [24, 32, 37])
def test_imagefolder_loader_is_its_stated_preprocessing(tmp_path: Path, size: int) -> None:
    make_folders(tmp_path)
    bundle = load_data(DatasetConfig(name="imagefolder", root=str(tmp_path)), 0)
    spec = bundle.preprocess
    assert spec.pil_mode == "RGB" and spec.short_side_ratio == 1.14 and spec.center_crop
    stated = np.stack([spec.apply(p, size) for p in bundle.test.files])  # PIL + numpy from the files
    assert np.array_equal(bundle.test.batch(torch.arange(len(stated)), size).numpy(), stated)


def test_imagefolder_native_size_comes_from_the_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_folders(tmp_path)  # training images 40-43 x 50 px, median short side 41: 1.14 x 36 = 41 px, not 224
    bundle = load_data(DatasetConfig(name="imagefolder", root=str(tmp_path)), 0)
    assert bundle.native_size == bundle.preprocess.largest_size(41) == 36 and not bundle.notes
    with caplog.at_level("WARNING", logger="edgecompress.evaluators.data"):
        big = load_data(DatasetConfig(name="imagefolder", root=str(tmp_path), resolution=64), 0)
    assert big.native_size == 64
    assert big.notes and "dataset.resolution 64 px upsamples" in big.notes[0] and "36 px" in big.notes[0]
    assert any("upsamples" in r.getMessage() for r in caplog.records)
