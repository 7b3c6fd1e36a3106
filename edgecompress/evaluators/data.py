"""Datasets (registry): Fashion-MNIST IDX, CIFAR-10 python pickles, ImageNet-style class folders.

Every dataset yields train/val/test splits (splits.py) with a seeded train/validation split of the training set:
the search only sees validation accuracy, the test split is for final reports. Each loader's inference-time
preprocessing is a `Preprocess` (runtime/preprocess.py) defined next to it and used by its code: exports state
it in config.yaml and embed it in ONNX.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecompress.errors import DataError
from edgecompress.evaluators.splits import FOLDER_PREPROCESS, FolderSplit, Split, TensorSplit
from edgecompress.registry import Registry
from edgecompress.runtime.preprocess import Preprocess

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
log = logging.getLogger(__name__)


@dataclass
class RawData:
    """What a dataset loader returns before the train/val split."""

    train: Split
    test: Split
    classes: list[str]
    in_chans: int
    native_size: int
    preprocess: Preprocess | None = None  # how the loader turns a stored image into the model's input


@dataclass
class DataBundle:
    """Train/val/test splits of one dataset plus its metadata."""

    name: str
    classes: list[str]
    in_chans: int
    native_size: int
    train: Split
    val: Split
    test: Split
    preprocess: Preprocess | None = None
    notes: list[str] = field(default_factory=list)  # warnings about the data (e.g. upsampling)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---- registry ----------------------------------------------------------------------------------
_DATASETS: Registry[Callable[[Path | None], RawData]] = Registry("dataset")
DEFAULT_SIZES: dict[str, int] = {}
CHANNELS: dict[str, int] = {}


def register_dataset(name: str, native_size: int, in_chans: int = 3
                     ) -> Callable[[Callable[[Path | None], RawData]], Callable]:
    DEFAULT_SIZES[name] = native_size
    CHANNELS[name] = in_chans
    return _DATASETS.register(name)


def data_shape(cfg: Any) -> tuple[int, int]:
    """(channels, native side) of dataset `cfg` without loading it (an image folder reads a few headers): what
    a model's structure is discovered at, the same in the search's process and in every trial's."""
    _DATASETS.get(cfg.name)  # unknown name: the error listing the valid ones
    if cfg.resolution:
        return CHANNELS[cfg.name], int(cfg.resolution)
    if cfg.name == "imagefolder" and cfg.root:
        root = Path(cfg.root).expanduser()
        if not root.is_dir():
            raise DataError(f"dataset.root {root}: " + ("not a folder" if root.exists() else "folder not found"))
        files, _, _ = scan_class_folders(root / "train")
        return CHANNELS[cfg.name], folder_native_size(files)
    return CHANNELS[cfg.name], DEFAULT_SIZES[cfg.name]


def list_datasets() -> list[str]:
    return _DATASETS.names()


def data_root() -> Path:
    """Where datasets are found (read only; `edgecompress download` is the one writer): $EDGECOMPRESS_DATA, else
    $XDG_DATA_HOME/edgecompress (~/.local/share/edgecompress)."""
    if os.environ.get("EDGECOMPRESS_DATA"):
        return Path(os.environ["EDGECOMPRESS_DATA"])
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "edgecompress"


def cache_root() -> Path:
    """The writable cache of things derived from datasets (rendered scenes): $EDGECOMPRESS_CACHE, else
    $XDG_CACHE_HOME/edgecompress (~/.cache/edgecompress). Deleting it only costs re-rendering."""
    if os.environ.get("EDGECOMPRESS_CACHE"):
        return Path(os.environ["EDGECOMPRESS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgecompress"


def load_data(cfg: Any, seed: int = 0) -> DataBundle:
    """Load `cfg.name` (a DatasetConfig) and split train into train/val with `seed`. A missing, truncated or
    corrupt file raises DataError naming it (the whole dataset is read and checked here)."""
    root = Path(cfg.root).expanduser() if cfg.root else None
    if root is not None and not root.is_dir():
        raise DataError(f"dataset.root {root}: " + ("not a folder" if root.exists() else "folder not found"))
    raw = _DATASETS.get(cfg.name)(root)
    n = len(raw.train)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, int(round(n * cfg.val_fraction)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if getattr(cfg, "val_subset", None):
        val_idx = val_idx[: cfg.val_subset]
    if getattr(cfg, "train_subset", None):
        train_idx = train_idx[: cfg.train_subset]
    test = raw.test
    if getattr(cfg, "test_subset", None) and cfg.test_subset < len(test):
        test = test.subset(torch.arange(cfg.test_subset))  # type: ignore[attr-defined]
    resolution = getattr(cfg, "resolution", None)
    notes = []
    if resolution and resolution > raw.native_size:
        notes.append(f"dataset.resolution {resolution} px upsamples the {cfg.name} images: they give "
                     f"{raw.native_size} px without enlarging (training costs more, with no more detail)")
        log.warning(notes[-1])
    return DataBundle(
        name=cfg.name, classes=raw.classes, in_chans=raw.in_chans, native_size=resolution or raw.native_size,
        train=raw.train.subset(train_idx), val=raw.train.subset(val_idx), test=test,  # type: ignore[attr-defined]
        preprocess=raw.preprocess, notes=notes,
    )


# ---- Fashion-MNIST -----------------------------------------------------------------------------
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                  "Bag", "Ankle boot"]


def fmnist_candidates(root: Path | None) -> list[Path]:
    """Folders the Fashion-MNIST loader looks in, in order: under `root` when given, else the data root
    (data_root(): its fashion-mnist/ folder, then `edgecompress download`'s layout) and Debian's
    dataset-fashion-mnist. Never the writable cache."""
    if root is not None:
        return [root, root / "FashionMNIST" / "raw"]
    data = data_root()
    return [data / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"), data / "FashionMNIST" / "raw"]


def fmnist_folder(root: Path | None = None) -> Path | None:
    """The folder the Fashion-MNIST loader reads (the first candidate holding the training images), or None."""
    return next((c for c in fmnist_candidates(root) if (c / FMNIST_FILES["train_images"]).is_file()), None)


def read_idx(path: Path, expect_dims: int) -> np.ndarray:
    """Parse a gzip (or plain) IDX file; errors name the file and what is wrong."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(data) < 4 + 4 * expect_dims:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != expect_dims:
        raise DataError(f"{path}: not an IDX uint8 file with {expect_dims} dims "
                        f"(magic {zero:#x}, type {dtype_code:#x}, dims {ndim})")
    shape = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(shape))
    if body.size != expected:
        raise DataError(f"{path}: truncated, header says {expected} values of shape {list(shape)}, "
                        f"file has {body.size}")
    return body.reshape(shape)


# TensorSplit.batch: /255, torch antialiased bilinear resize to size (no-op at 28), (x - mean) / std
FMNIST_PREPROCESS = Preprocess(
    dataset="fashion_mnist", stored="IDX uint8 N x 28 x 28 grayscale (*-images-idx3-ubyte.gz)", channels=1,
    mean=(0.2860,), std=(0.3530,))


@register_dataset("fashion_mnist", native_size=28, in_chans=1)
def _fashion_mnist(root: Path | None) -> RawData:
    folder = fmnist_folder(root)
    if folder is None:
        cands = fmnist_candidates(root)
        raise DataError(f"Fashion-MNIST not found (looked for {FMNIST_FILES['train_images']} in "
                        f"{', '.join(map(str, cands))}); run `make data` or `edgecompress download fashion_mnist`")
    arrays = {k: read_idx(folder / f, 3 if k.endswith("images") else 1) for k, f in FMNIST_FILES.items()}
    for split in ("train", "test"):
        ni, nl = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if ni != nl:
            raise DataError(f"{folder / FMNIST_FILES[split + '_labels']}: {nl} labels for {ni} images")
        if arrays[f"{split}_labels"].max(initial=0) >= 10:
            raise DataError(f"{folder / FMNIST_FILES[split + '_labels']}: label out of range 0..9")
    mean, std = FMNIST_PREPROCESS.mean, FMNIST_PREPROCESS.std

    def mk(s: str) -> TensorSplit:
        imgs = torch.from_numpy(arrays[f"{s}_images"].copy()).unsqueeze(1)
        return TensorSplit(imgs, torch.from_numpy(arrays[f"{s}_labels"].astype(np.int64)), mean, std)

    return RawData(mk("train"), mk("test"), list(FMNIST_CLASSES), in_chans=1, native_size=28,
                   preprocess=FMNIST_PREPROCESS)


# ---- Fashion-MNIST scenes (evaluators/scenes.py) -------------------------------------------------
@register_dataset("fashion_mnist_scenes", native_size=48, in_chans=1)
def _fashion_mnist_scenes(root: Path | None) -> RawData:
    """Garments at random scale and position on textured 48 px canvases, rendered once from Fashion-MNIST
    (found as the fashion_mnist loader finds it, `root` being its folder) and cached under cache_root()."""
    from edgecompress.evaluators import scenes

    folder = scenes.scenes_folder(cache_root())
    if not (folder / "meta.json").is_file():
        src = fmnist_folder(root)
        if src is None:
            raise DataError(f"fashion_mnist_scenes is rendered from Fashion-MNIST, not found in "
                            f"{', '.join(map(str, fmnist_candidates(root)))}; run `make data`")
        arrays = {k: read_idx(src / f, 3 if k.endswith("images") else 1) for k, f in FMNIST_FILES.items()}
        folder = scenes.build_scenes(arrays, cache_root())
    mean, std = scenes.SCENES_PREPROCESS.mean, scenes.SCENES_PREPROCESS.std

    def mk(split: str) -> TensorSplit:
        imgs, labels = scenes.load_scene_arrays(folder, split)
        return TensorSplit(torch.from_numpy(imgs).unsqueeze(1), torch.from_numpy(labels), mean, std)

    return RawData(mk("train"), mk("test"), list(FMNIST_CLASSES), in_chans=1, native_size=scenes.CANVAS,
                   preprocess=scenes.SCENES_PREPROCESS)


# ---- CIFAR-10 (python pickles) -----------------------------------------------------------------
def _cifar_folder(root: Path | None) -> Path:
    cands = [root, root / "cifar-10-batches-py"] if root else [data_root() / "cifar-10-batches-py"]
    for c in cands:
        if c is not None and (c / "data_batch_1").is_file():
            return c
    raise DataError(f"CIFAR-10 not found (looked for data_batch_1 in {', '.join(str(c) for c in cands)})")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")  # noqa: S301 - the dataset's own format
    except Exception as e:  # noqa: BLE001 - truncated or not a pickle
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError(f"{path}: missing b'data' or b'labels' in the pickle")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' must be uint8 N x 3072, got {data.dtype} {list(data.shape)}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


# TensorSplit.batch: /255, torch antialiased bilinear resize to size (no-op at 32), (x - mean) / std
CIFAR_PREPROCESS = Preprocess(
    dataset="cifar10", stored="pickle b'data' uint8 N x 3072 = N x 3 x 32 x 32 RGB planes, i.e. "
    "row.reshape(3, 32, 32).transpose(1, 2, 0)", channels=3,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


@register_dataset("cifar10", native_size=32)
def _cifar10(root: Path | None) -> RawData:
    folder = _cifar_folder(root)
    parts = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = _read_cifar_batch(folder / "test_batch")
    classes = [f"class_{i}" for i in range(10)]
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as f:
                classes = [c.decode() for c in pickle.load(f, encoding="bytes")[b"label_names"]]  # noqa: S301
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{meta}: not a readable CIFAR meta pickle ({e})") from None
    mean, std = CIFAR_PREPROCESS.mean, CIFAR_PREPROCESS.std
    train = TensorSplit(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                        torch.from_numpy(np.concatenate([p[1] for p in parts])), mean, std)
    test = TensorSplit(torch.from_numpy(test_x.copy()), torch.from_numpy(test_y), mean, std)
    return RawData(train, test, classes, in_chans=3, native_size=32, preprocess=CIFAR_PREPROCESS)


# ---- ImageNet-style folders --------------------------------------------------------------------
def scan_class_folders(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """`folder/<class>/<image>` -> files, labels, class names (sorted, as torchvision's ImageFolder)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{folder}: no class sub-folders (expected {folder}/<class>/<image>.JPEG)")
    if len(classes) < 2:
        raise DataError(f"{folder}: {len(classes)} class folder ({classes[0]!r}); a classifier needs at least 2 "
                        f"(expected {folder}/<class>/<image>.JPEG)")
    files, labels = [], []
    for i, c in enumerate(classes):
        imgs = sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not any(_readable(p) for p in imgs):  # stops at the first readable image: one header per class
            what = f"none of its {len(imgs)} images can be read" if imgs else \
                f"no images ({', '.join(IMAGE_EXTENSIONS)})"
            raise DataError(f"{folder / c}: class folder with {what}")
        files += imgs
        labels += [i] * len(imgs)
    return files, labels, classes


def _readable(path: Path) -> bool:
    """Whether PIL can identify and decode `path` (unreadable files elsewhere in a class are warned about
    when loaded, as FolderSplit does)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def folder_native_size(files: list[Path], preprocess: Preprocess = FOLDER_PREPROCESS, sample: int = 64) -> int:
    """The input size a folder's images give without enlarging: the largest size (at most 224) whose short-side
    resize (1.14 x size) is not above the median short side of up to `sample` evenly spaced images."""
    from PIL import Image, UnidentifiedImageError

    step = max(1, len(files) // sample)
    shorts = []
    for path in files[::step][:sample]:
        try:
            with Image.open(path) as im:  # reads the header only
                shorts.append(min(im.size))
        except (UnidentifiedImageError, OSError):
            continue  # reported when the image is loaded
    if not shorts:
        raise DataError(f"{files[0].parent.parent}: none of {min(len(files), sample)} sampled images can be read")
    return preprocess.largest_size(int(np.median(shorts)))


@register_dataset("imagefolder", native_size=224)  # 224 at most: the size comes from the images
def _imagefolder(root: Path | None) -> RawData:
    if root is None:
        raise DataError("imagefolder needs dataset.root (a folder with train/ and val/ class folders)")
    tr_files, tr_labels, classes = scan_class_folders(root / "train")
    va_files, va_labels, va_classes = scan_class_folders(root / "val")
    if va_classes != classes:
        extra = sorted(set(va_classes) ^ set(classes))[:3]
        raise DataError(f"{root / 'val'}: class folders differ from {root / 'train'} (e.g. {extra})")
    native = folder_native_size(tr_files)
    return RawData(FolderSplit(tr_files, tr_labels), FolderSplit(va_files, va_labels), classes, 3, native,
                   preprocess=FOLDER_PREPROCESS)


def download(name: str, dest: Path | None = None) -> Path:
    """Fetch a public dataset with torchvision into the data root (needs the network)."""
    import torchvision

    dest = dest or data_root()
    dest.mkdir(parents=True, exist_ok=True)
    if name == "fashion_mnist":
        torchvision.datasets.FashionMNIST(str(dest), download=True)
        return dest / "FashionMNIST" / "raw"
    if name == "cifar10":
        torchvision.datasets.CIFAR10(str(dest), download=True)
        return dest / "cifar-10-batches-py"
    raise DataError(f"no download for dataset {name!r} (available: fashion_mnist, cifar10)")
