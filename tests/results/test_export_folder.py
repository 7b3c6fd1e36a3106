"""An export of a model trained on a folder of small JPEGs says truthfully how to feed it.

A real study (real evaluator, resnet8, 2 epochs) runs on a folder of 28-40 px JPEGs of varied aspect written
here; the trial is exported through the real CLI with --preprocess. The test then scores the exported ONNX
files with a preprocessing written in this file from config.yaml alone (PIL + numpy, not the project's
loader) and with raw uint8 images: both give the study's accuracy. The images carry distractors outside the
centre square, so a preprocessing that is not the loader's (e.g. the old config.yaml's "pixels / 255, bilinear
resize to size, then (x - mean) / std", which squashes the whole image) scores far lower.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from PIL import Image, ImageDraw

COLOURS = [(205, 45, 45), (45, 175, 60), (50, 70, 205), (215, 200, 45)]  # class = colour of the centre disc
STUDY = "folder"
EXPERIMENT = {
    "name": "folder-export", "seed": 0,
    "dataset": {"name": "imagefolder", "val_fraction": 0.5},  # root set by the fixture
    "model": {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}},
    "base_training": {"epochs": 2, "batch_size": 32, "lr": 0.05},
    "finetune": {"epochs": 1, "batch_size": 32},
    "device": {"device": "cpu", "threads": 1, "max_seconds": 0.2, "min_repeats": 5, "batch_size": 8},
    "space": {"prune": {"choices": [0.0]}, "bits": {"choices": [32]}, "resolution": {"choices": [1.0]}},
    "budget": {"trials": 1, "sampler": "random", "enqueue_uncompressed": True},
}


def write_folder(root: Path, n_train: int = 120, n_val: int = 10, seed: int = 0) -> None:
    """root/{train,val}/class<k>/*.jpg: a disc of class k's colour (jittered) in the centre of a noisy grey image
    28-40 px on the short side, 1.3-1.8 x longer; both ends beyond the centre square hold a block of another
    class's colour."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, colour in enumerate(COLOURS):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                short = int(rng.integers(28, 41))
                long = int(round(short * rng.uniform(1.3, 1.8)))
                w, h = (long, short) if rng.random() < 0.7 else (short, long)
                arr = np.clip(rng.normal(rng.uniform(100, 160), 18, (h, w, 3)), 0, 255).astype(np.uint8)
                im = Image.fromarray(arr)
                draw = ImageDraw.Draw(im)
                col = tuple(int(v) for v in np.clip(np.array(colour) + rng.normal(0, 45, 3), 0, 255))
                cx, cy, r = w / 2 + rng.uniform(-2, 2), h / 2 + rng.uniform(-2, 2), short * rng.uniform(0.22, 0.34)
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
                other = COLOURS[(c + int(rng.integers(1, len(COLOURS)))) % len(COLOURS)]
                m = (long - short) / 2
                for lo in (0, long - m):
                    draw.rectangle([lo + 1, 2, lo + m - 1, short - 2] if w > h else [2, lo + 1, short - 2, lo + m - 1],
                                   fill=other)
                im.save(folder / f"{c}_{i}.jpg", quality=90)


@pytest.fixture(scope="module")
def folder_export(tmp_path_factory: pytest.TempPathFactory):
    """(export folder, CLI stdout, validation files, labels, study accuracy, native size)."""
    import optuna

    import edgecompress.cli as cli
    from edgecompress.evaluators.data import load_data
    from edgecompress.evaluators.evaluator import CompressionEvaluator
    from edgecompress.search import run_search
    from edgecompress.spaces import parse_experiment

    base = tmp_path_factory.mktemp("folder-export").resolve()
    write_folder(base / "data")
    cfg = {**EXPERIMENT, "dataset": {**EXPERIMENT["dataset"], "root": str(base / "data")}}
    exp = parse_experiment(cfg)
    url = f"sqlite:///{base / 'folder.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECOMPRESS_RUNS", str(base / "runs"))
        data = load_data(exp.dataset, exp.seed)
        summary = run_search(exp, STUDY, storage=url, trials=1, evaluator=CompressionEvaluator(exp, data=data))
        assert summary.stats.complete == 1, summary
        out = base / "export"
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):  # the CLI's output (a module fixture cannot use capsys)
            try:
                cli.main(["export", url, "--trial", "0", "--format", "onnx", "--preprocess", "-o", str(out)])
            except SystemExit as e:
                assert not e.code, buf.getvalue()
    accuracy = optuna.load_study(study_name=STUDY, storage=url).trials[0].user_attrs["accuracy"]
    return out, buf.getvalue(), list(data.val.files), data.val.labels.numpy(), accuracy, data.native_size


def from_config(path: Path, pre: dict) -> np.ndarray:
    """config.yaml's input.preprocess steps, written out with PIL + numpy (float32 C x size x size)."""
    ops = [s["op"] for s in pre["steps"]]
    assert ops == ["decode", "resize_short_side", "center_crop", "to_float", "normalize", "layout"], ops
    step = {s["op"]: s for s in pre["steps"]}
    im = Image.open(path).convert(step["decode"]["mode"])
    short, s = min(im.size), step["resize_short_side"]["short_side"]
    assert step["resize_short_side"]["library"] == "PIL" and step["resize_short_side"]["interpolation"] == "bilinear"
    im = im.resize(tuple(math.floor(v * s / short + 0.5) for v in im.size), Image.BILINEAR)
    size = step["center_crop"]["size"]
    left, top = (im.width - size) // 2, (im.height - size) // 2
    a = np.asarray(im.crop((left, top, left + size, top + size)), np.float32) / step["to_float"]["divide_by"]
    a = (a - np.float32(step["normalize"]["mean"])) / np.float32(step["normalize"]["std"])
    assert step["layout"]["to"] == "NCHW"
    return a.transpose(2, 0, 1)


def old_documented(path: Path, size: int, mean: list[float], std: list[float]) -> np.ndarray:
    """What config.yaml said before: "pixels / 255, bilinear resize to size, then (x - mean) / std"."""
    a = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255
    return ((a - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)


def _accuracy(sess: ort.InferenceSession, batches: list[np.ndarray], labels: np.ndarray) -> float:
    name = sess.get_inputs()[0].name
    preds = np.array([int(sess.run(None, {name: b})[0].argmax(1)[0]) for b in batches])
    return float((preds == labels).mean())


def test_native_size_comes_from_the_images(folder_export) -> None:
    out, _, _, _, _, native = folder_export
    doc = yaml.safe_load((out / "config.yaml").read_text())
    assert native == 30  # median short side 34 px: 1.14 x 30 = 34, not 224
    assert doc["input"]["size"] == doc["input"]["preprocess"]["size"] == 30


def test_config_yaml_alone_reproduces_the_study_accuracy(folder_export) -> None:
    out, stdout, files, labels, study_acc, _ = folder_export
    doc = yaml.safe_load((out / "config.yaml").read_text())
    pre, size = doc["input"]["preprocess"], doc["input"]["size"]
    words = " ".join(pre["words"])
    assert "short side is 34 px" in words and f"centre {size} x {size}" in words and "Image.BILINEAR" in words
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    acc = _accuracy(sess, [from_config(f, pre)[None] for f in files], labels)
    assert len(files) == 240 and 0.6 < study_acc
    assert abs(acc - study_acc) <= 0.005, (acc, study_acc)
    # the export's own check: the stated steps on the raw validation files, next to the study's accuracy
    pc = doc["preprocess_check"]
    assert pc["passed"] and pc["samples"] == 240 and pc["max_input_diff"] == 0.0
    assert pc["study_accuracy"] == pytest.approx(study_acc) and pc["onnx_accuracy"] == pytest.approx(acc)
    assert f"stated preprocessing on 240 raw validation images: accuracy {acc:.4f}" in stdout
    # the folder makes the preprocessing matter: the old one-line description loses most of the accuracy
    mean, std = doc["input"]["mean"], doc["input"]["std"]
    old = _accuracy(sess, [old_documented(f, size, mean, std)[None] for f in files], labels)
    assert old < study_acc - 0.2, (old, study_acc)


def test_preprocess_onnx_takes_raw_uint8_images(folder_export) -> None:
    out, _, files, labels, study_acc, _ = folder_export
    doc = yaml.safe_load((out / "config.yaml").read_text())
    info = doc["input"]["preprocessed_onnx"]
    assert info["files"] == ["model_preprocess.onnx"] and info["dtype"] == "uint8" and info["layout"] == "NHWC"
    model = onnx.load(str(out / "model_preprocess.onnx"))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    resize = [n for n in model.graph.node if n.op_type == "Resize"]
    assert resize and all(a.i == 1 for n in resize for a in n.attribute if a.name == "antialias")
    sess = ort.InferenceSession(str(out / "model_preprocess.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(uint8)"
    raw = [np.asarray(Image.open(f).convert("RGB"))[None] for f in files]  # N x H x W x 3, each its own size
    assert len({r.shape for r in raw}) > 20
    acc = _accuracy(sess, raw, labels)
    assert abs(acc - study_acc) <= 0.005, (acc, study_acc)
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["onnx_preprocess"]["passed"] and checks["onnx_preprocess"]["agreement"] >= 0.99
