"""Preprocess: the loaders' steps as data, the plain PIL + numpy reference, and the same steps as an ONNX graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from edgecompress.runtime.backend_ort import ONNX_OPSET, export_onnx
from edgecompress.runtime.preprocess import (
    PREPROCESS_OPSET,
    Preprocess,
    aa_bilinear_resize,
    model_opset,
    preprocessing_graph,
    round_half_up,
    with_preprocessing,
)

FOLDER = Preprocess("folder", "files", 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), pil_mode="RGB",
                    short_side_ratio=1.14, center_crop=True, tensor_resize=False)
TENSOR = Preprocess("tensor", "uint8 arrays", 3, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
GRAY = Preprocess("gray", "uint8 arrays", 1, (0.286,), (0.353,))
ONE_LEVEL = 1 / 255 / 0.224 + 1e-4  # one uint8 grey level after normalisation (largest 1/std)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _image(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, c) if c > 1 else (h, w)).astype(np.uint8)


def test_geometry_rules() -> None:
    assert round_half_up(2.5) == 3 and round_half_up(3.5) == 4  # not Python's round-half-even
    assert FOLDER.short_side(28) == 32 and FOLDER.short_side(224) == 255
    assert FOLDER.resized_dims(48, 32, 28) == (48, 32)  # no resampling at all
    assert FOLDER.resized_dims(500, 375, 224) == (340, 255)
    assert FOLDER.crop_box(45, 32, 28) == (8, 2, 36, 30)
    # the largest size whose short-side resize does not enlarge the image
    for short in (20, 28, 32, 34, 64, 255):
        s = FOLDER.largest_size(short)
        assert FOLDER.short_side(s) <= short < FOLDER.short_side(s + 1)
    assert FOLDER.largest_size(2000) == 224  # capped: ImageNet-sized photos keep 224


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="mean/std"):
        Preprocess("x", "s", 3, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="center_crop needs"):
        Preprocess("x", "s", 1, (0.5,), (0.5,), center_crop=True)
    with pytest.raises(ValueError, match=">= 1"):
        Preprocess("x", "s", 1, (0.5,), (0.5,), short_side_ratio=0.9)


def test_words_and_steps_carry_the_numbers() -> None:
    words = " ".join(FOLDER.words(28))
    assert "short side is 32 px" in words and "centre 28 x 28" in words and "Image.BILINEAR" in words
    assert "0.485" in words and "NCHW" in words
    ops = [s["op"] for s in FOLDER.steps(28)]
    assert ops == ["decode", "resize_short_side", "center_crop", "to_float", "normalize", "layout"]
    assert [s["op"] for s in TENSOR.steps(24)] == ["decode", "to_float", "resize", "normalize", "layout"]
    assert FOLDER.describe(28)["steps"][1]["short_side"] == 32


@pytest.mark.parametrize(("h", "w", "size"), [(32, 32, 24), (32, 32, 40), (28, 28, 28), (30, 50, 17)])
def test_numpy_resize_is_torchs_antialiased_bilinear(h: int, w: int, size: int) -> None:
    x = _image(h, w).astype(np.float32) / 255
    want = F.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], size=(size, size), mode="bilinear",
                         align_corners=False, antialias=True)[0].permute(1, 2, 0).numpy()
    assert np.abs(aa_bilinear_resize(x, size, size) - want).max() < 1e-5


def test_apply_folder_matches_pil_steps_written_by_hand(tmp_path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_image(37, 53)).save(path)
    im = Image.open(path).convert("RGB").resize((round(53 * 36 / 37), 36), Image.BILINEAR)  # short 36 = 1.14 x 32
    left, top = (im.width - 32) // 2, (im.height - 32) // 2
    a = np.asarray(im, np.float32)[top: top + 32, left: left + 32] / 255
    want = ((a - FOLDER.mean) / np.asarray(FOLDER.std)).transpose(2, 0, 1)
    got = FOLDER.apply(path, 32)
    assert got.shape == (3, 32, 32) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5


# one image per case: shrinking, enlarging and no resampling, landscape and portrait
FOLDER_CASES = [(32, 48), (40, 30), (30, 40), (33, 57), (100, 80), (28, 28), (26, 33)]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_folder_graph_matches_the_pil_reference(layout: str) -> None:
    sess = _session(preprocessing_graph(FOLDER, 28, layout))
    for i, (h, w) in enumerate(FOLDER_CASES):
        img = _image(h, w, seed=i)
        feed = img[None] if layout == "NHWC" else img.transpose(2, 0, 1)[None]
        out = sess.run(None, {"images": feed})[0][0]
        ref = FOLDER.apply(img, 28)
        assert out.shape == ref.shape == (3, 28, 28)
        # onnxruntime's uint8 antialiased Resize rounds like PIL's to within one grey level, on few pixels
        diff = np.abs(out - ref)
        assert diff.max() <= ONE_LEVEL and (diff > 1e-4).mean() < 0.1, (h, w, diff.max(), (diff > 1e-4).mean())


@pytest.mark.parametrize(("spec", "size"), [(TENSOR, 24), (TENSOR, 40), (TENSOR, 32), (GRAY, 14), (GRAY, 28)])
def test_tensor_graph_matches_torch(spec: Preprocess, size: int) -> None:
    c = spec.channels
    img = _image(32 if c == 3 else 28, 32 if c == 3 else 28, c)
    out = _session(preprocessing_graph(spec, size)).run(None, {"images": img.reshape(1, *img.shape[:2], c)})[0][0]
    t = torch.from_numpy(img.reshape(*img.shape[:2], c)).permute(2, 0, 1)[None].float().div_(255)
    if t.shape[-1] != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    t = (t - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)
    assert np.abs(out - t[0].numpy()).max() < 1e-4
    assert np.abs(spec.apply(img, size) - t[0].numpy()).max() < 1e-4


def test_graph_needs_opset_18() -> None:
    with pytest.raises(ValueError, match="opset >= 18"):
        preprocessing_graph(FOLDER, 28, opset=17)
    with pytest.raises(ValueError, match="layout"):
        preprocessing_graph(FOLDER, 28, layout="HWC")


def test_with_preprocessing_joins_an_opset_17_model(tmp_path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    path = export_onnx(net, torch.randn(2, 3, 28, 28), tmp_path / "m.onnx")
    assert model_opset(onnx.load(str(path))) == ONNX_OPSET < PREPROCESS_OPSET
    merged = with_preprocessing(path, FOLDER, 28)
    assert model_opset(merged) == PREPROCESS_OPSET
    assert [i.name for i in merged.graph.input] == ["images"]
    assert merged.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    sess = _session(merged)
    imgs = [_image(h, w, seed=i) for i, (h, w) in enumerate(FOLDER_CASES)]
    for img in imgs:
        got = sess.run(None, {"images": img[None]})[0]
        with torch.no_grad():
            want = net(torch.from_numpy(FOLDER.apply(img, 28))[None]).numpy()
        assert np.abs(got - want).max() < 1e-2
    same = np.stack([_image(40, 52, seed=s) for s in range(3)])  # a batch of one size
    assert sess.run(None, {"images": same})[0].shape == (3, 5)


@pytest.mark.parametrize(("spec", "size", "shape"), [(GRAY, 21, (28, 28, 1)), (FOLDER, 24, (30, 41, 3))])
def test_with_preprocessing_in_front_of_an_int8_qdq_model(tmp_path, spec: Preprocess, size: int, shape) -> None:
    """onnxruntime's optimisers rewrite int8 QDQ graphs (NHWC convs, moved transposes): the graph must survive."""
    from edgecompress.runtime.backend import deploy

    torch.manual_seed(0)
    c = spec.channels
    net = nn.Sequential(nn.Conv2d(c, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5)).eval()
    deploy(net, torch.randn(1, c, size, size), backend="onnxruntime", precision="int8",
           calib_batches=[torch.randn(16, c, size, size)], workdir=tmp_path)
    merged = with_preprocessing(tmp_path / "model_int8.onnx", spec, size)
    assert len({o.domain for o in merged.opset_import}) == len(merged.opset_import)  # one entry per domain
    sess = _session(merged)  # default optimisation level
    imgs = np.stack([_image(*shape[:2], c, seed=s).reshape(shape) for s in range(4)])
    got = sess.run(None, {"images": imgs})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(np.stack([spec.apply(im, size) for im in imgs]))).numpy()
    assert got.shape == (4, 5) and np.abs(got - want).max() < 0.1 * np.abs(want).max() + 0.05
