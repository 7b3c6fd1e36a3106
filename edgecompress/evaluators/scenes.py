"""`fashion_mnist_scenes`: each Fashion-MNIST garment at a random scale and position on a textured 48 px canvas.

On Fashion-MNIST the garment fills the frame, so dynamic image cropping (evaluators/dic.py) cannot help; on
photos the object often does not. This dataset makes that case with real images: every garment is resized to
35-80% of the canvas side and pasted (alpha from its intensity) at a random place on a random texture
(two sinusoid gratings plus smooth noise). Generation is deterministic from a seed (one numpy generator per
image, keyed by seed, split and index), done once and cached on disk under cache_root()/scenes/. The original
train/test split is kept (a seeded 20k subset of the 60k training images).

The ground-truth boxes (tight boxes of the garment's nonzero pixels) are written to a separate folder and read
only by `ground_truth_boxes`, for evaluation: the CAM labelling and the box predictor never see them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

from edgecompress.errors import DataError
from edgecompress.runtime.preprocess import Preprocess

CANVAS = 48
SCALE_RANGE = (0.35, 0.80)  # garment side as a fraction of the canvas side
TRAIN_IMAGES = 20_000
VERSION = 1
NAME = "fashion_mnist_scenes"
_SPLIT_ID = {"train": 0, "test": 1}

# TensorSplit.batch: /255, antialiased bilinear resize (no-op at 48), (x - mean) / std; mean/std measured on
# the generated training split (seed 0)
SCENES_PREPROCESS = Preprocess(
    dataset=NAME, stored="uint8 N x 48 x 48 grayscale canvases (numpy .npy in the scenes cache)", channels=1,
    mean=(0.3171,), std=(0.1915,))


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random background in [0, 1]: two oriented sinusoid gratings plus bilinear-upsampled noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.zeros((size, size), np.float32)
    for _ in range(2):
        theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(2.0, 7.0), rng.uniform(0, 2 * np.pi)
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 1, 6, 6)).astype(np.float32))
    out += 0.8 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    out = (out - out.min()) / max(1e-6, float(out.max() - out.min()))
    return out * rng.uniform(0.35, 0.7)  # never as bright as the garment's body


def render_scene(garment: np.ndarray, rng: np.random.Generator,
                 canvas: int = CANVAS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene from a 28 x 28 uint8 garment: (canvas uint8 H x W, box [x0, y0, x1, y1] in pixels with x1, y1
    exclusive, the pasted garment layer uint8 H x W whose nonzero pixels the box bounds tightly)."""
    side = int(round(rng.uniform(*SCALE_RANGE) * canvas))
    g = torch.from_numpy(garment.astype(np.float32))[None, None]
    g = F.interpolate(g, size=(side, side), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    g = g.round().clamp(0, 255).numpy().astype(np.uint8)
    x0, y0 = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
    layer = np.zeros((canvas, canvas), np.uint8)
    layer[y0:y0 + side, x0:x0 + side] = g
    bg = _texture(rng, canvas) * 255.0
    alpha = np.clip(layer.astype(np.float32) / 48.0, 0.0, 1.0)
    img = np.clip(alpha * layer + (1 - alpha) * bg, 0, 255).round().astype(np.uint8)
    return img, tight_box(layer), layer


def tight_box(layer: np.ndarray) -> np.ndarray:
    """[x0, y0, x1, y1] (x1, y1 exclusive) of the nonzero pixels of `layer`; the whole image when it has none."""
    ys, xs = np.nonzero(layer)
    if len(xs) == 0:
        return np.array([0, 0, layer.shape[1], layer.shape[0]], np.float32)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def render_split(garments: np.ndarray, seed: int, split: str, indices: np.ndarray | None = None,
                 canvas: int = CANVAS) -> tuple[np.ndarray, np.ndarray]:
    """Scenes and boxes for `garments` (N x 28 x 28); image i uses the generator keyed by (seed, split,
    indices[i]), so any image can be re-rendered alone. (`canvas` other than 48: smaller scenes for tests.)"""
    idx = np.arange(len(garments)) if indices is None else indices
    imgs = np.zeros((len(garments), canvas, canvas), np.uint8)
    boxes = np.zeros((len(garments), 4), np.float32)
    for i, (g, k) in enumerate(zip(garments, idx)):
        rng = np.random.default_rng([seed, _SPLIT_ID[split], int(k)])
        imgs[i], boxes[i], _ = render_scene(g, rng, canvas)
    return imgs, boxes


def scenes_folder(cache: Path, seed: int = 0) -> Path:
    return cache / "scenes" / f"{NAME}-v{VERSION}-seed{seed}"


def boxes_folder(cache: Path, seed: int = 0) -> Path:
    """Where the ground-truth boxes live: a sibling of the images' folder, never read by the loader."""
    return cache / "scenes" / f"{NAME}-v{VERSION}-seed{seed}-boxes"


def train_subset_indices(n_total: int, seed: int = 0, n: int = TRAIN_IMAGES) -> np.ndarray:
    """The seeded subset of Fashion-MNIST training images the scenes' training split is made of."""
    return np.sort(np.random.default_rng([seed, 99]).permutation(n_total)[: min(n, n_total)])


def build_scenes(arrays: dict[str, np.ndarray], cache: Path, seed: int = 0, n_train: int = TRAIN_IMAGES) -> Path:
    """Render and cache the scenes of Fashion-MNIST `arrays` (train/test images and labels) once; returns the
    images' folder. Boxes go to boxes_folder (a separate folder)."""
    folder, bfolder = scenes_folder(cache, seed), boxes_folder(cache, seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "meta.json").is_file():
            return folder
        folder.mkdir(exist_ok=True)
        bfolder.mkdir(exist_ok=True)
        sel = {"train": train_subset_indices(len(arrays["train_images"]), seed, n_train),
               "test": np.arange(len(arrays["test_images"]))}
        for split, idx in sel.items():
            imgs, boxes = render_split(arrays[f"{split}_images"][idx], seed, split, idx)
            np.save(folder / f"{split}_images.npy", imgs)
            np.save(folder / f"{split}_labels.npy", arrays[f"{split}_labels"][idx].astype(np.int64))
            np.save(folder / f"{split}_source_index.npy", idx)
            np.save(bfolder / f"{split}_boxes.npy", boxes)
        meta = {"name": NAME, "version": VERSION, "seed": seed, "canvas": CANVAS, "scale_range": SCALE_RANGE,
                "train_images": len(sel["train"]), "test_images": len(sel["test"])}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: marks the cache complete
    return folder


def load_scene_arrays(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 48 x 48 uint8, labels) of a cached split; DataError names a missing or bad file."""
    out = []
    for kind in ("images", "labels"):
        path = folder / f"{split}_{kind}.npy"
        try:
            out.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read the cached scenes ({e}); delete {folder} to regenerate") from None
    if len(out[0]) != len(out[1]) or out[0].shape[1:] != (CANVAS, CANVAS):
        raise DataError(f"{folder}: {split} images {out[0].shape} do not match {len(out[1])} labels")
    return out[0], out[1]


def ground_truth_boxes(cache: Path, split: str, seed: int = 0) -> np.ndarray:
    """Ground-truth boxes (N x 4, [x0, y0, x1, y1] on the 48 px canvas) of a cached split, for evaluation only."""
    path = boxes_folder(cache, seed) / f"{split}_boxes.npy"
    if not path.is_file():
        raise DataError(f"{path}: ground-truth boxes not found (generate the dataset first)")
    return np.load(path, allow_pickle=False)
