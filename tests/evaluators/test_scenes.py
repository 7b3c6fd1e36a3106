"""fashion_mnist_scenes: deterministic rendering, tight ground-truth boxes, cache layout (boxes kept apart)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecompress.evaluators import scenes
from edgecompress.evaluators.data import FMNIST_FILES, read_idx


@pytest.fixture(scope="module")
def garments(fmnist_dir: Path) -> dict[str, np.ndarray]:
    arrays = {k: read_idx(fmnist_dir / f, 3 if k.endswith("images") else 1) for k, f in FMNIST_FILES.items()}
    return {"train_images": arrays["train_images"][:120], "train_labels": arrays["train_labels"][:120],
            "test_images": arrays["test_images"][:40], "test_labels": arrays["test_labels"][:40]}


def test_rendering_is_deterministic_per_seed_and_index(garments: dict[str, np.ndarray]) -> None:
    g = garments["train_images"][:30]
    a_img, a_box = scenes.render_split(g, seed=0, split="train")
    b_img, b_box = scenes.render_split(g, seed=0, split="train")
    assert np.array_equal(a_img, b_img) and np.array_equal(a_box, b_box)
    c_img, _ = scenes.render_split(g, seed=1, split="train")
    assert not np.array_equal(a_img, c_img)
    one, one_box = scenes.render_split(g[7:8], seed=0, split="train", indices=np.array([7]))  # alone = in a batch
    assert np.array_equal(one[0], a_img[7]) and np.array_equal(one_box[0], a_box[7])


def test_boxes_are_tight_and_garments_vary_in_scale_and_place(garments: dict[str, np.ndarray]) -> None:
    sides, corners = [], []
    for i, g in enumerate(garments["train_images"][:60]):
        img, box, layer = scenes.render_scene(g, np.random.default_rng([0, 0, i]))
        x0, y0, x1, y1 = box.astype(int)
        ys, xs = np.nonzero(layer)
        assert xs.min() == x0 and xs.max() == x1 - 1 and ys.min() == y0 and ys.max() == y1 - 1  # contains, no larger
        assert layer[:, x0].any() and layer[:, x1 - 1].any() and layer[y0].any() and layer[y1 - 1].any()
        assert layer.sum() > 0 and img.shape == (scenes.CANVAS, scenes.CANVAS)
        solid = layer >= 48  # the garment's body is pasted opaque over the texture
        assert np.array_equal(img[solid], layer[solid])
        sides.append(max(x1 - x0, y1 - y0))
        corners.append((x0, y0))
    assert min(sides) < 0.5 * scenes.CANVAS < max(sides) <= 0.8 * scenes.CANVAS + 1
    assert len(set(corners)) > 40


def test_cache_keeps_the_split_and_puts_boxes_in_another_folder(garments: dict[str, np.ndarray],
                                                                tmp_path: Path) -> None:
    folder = scenes.build_scenes(garments, tmp_path, seed=0, n_train=50)
    imgs, labels = scenes.load_scene_arrays(folder, "train")
    src = np.load(folder / "train_source_index.npy")
    assert imgs.shape == (50, 48, 48) and np.array_equal(labels, garments["train_labels"][src])
    test_imgs, test_labels = scenes.load_scene_arrays(folder, "test")
    assert len(test_imgs) == 40 and np.array_equal(test_labels, garments["test_labels"])  # test split kept whole
    assert not list(folder.glob("*box*"))  # the loader's folder holds no boxes
    boxes = scenes.ground_truth_boxes(tmp_path, "test")
    again, again_boxes = scenes.render_split(garments["test_images"], 0, "test")
    assert np.array_equal(test_imgs, again) and np.array_equal(boxes, again_boxes)
    assert scenes.build_scenes(garments, tmp_path, seed=0, n_train=50) == folder  # cached: not re-rendered
