"""A user's own module named by import path in YAML goes through the whole CLI: inspect, search (pruning and depth
on the stages found from its graph), finalize, export with --preprocess checked on raw stored images, cascade."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from edgecompress.cli import main
from edgecompress.evaluators.data import FMNIST_FILES, read_idx
from edgecompress.study import load_study, study_to_frame

USER = {
    "name": "byo", "seed": 0,
    "dataset": {"name": "fashion_mnist", "train_subset": 2000, "val_subset": 300, "test_subset": 300},
    "model": {"name": "edgecompress.testing:odd_net", "kwargs": {"width": 8}},
    "base_training": {"epochs": 3, "batch_size": 64, "lr": 0.1},
    "finetune": {"epochs": 1, "batch_size": 64, "train_subset": 300},
    "space": {"prune": {"choices": [0.0, 0.5]}, "depth": {"choices": [0.5, 1.0]}, "bits": {"choices": [32]},
              "resolution": {"choices": [1.0]}, "round_to": 2},
    "budget": {"trials": 3, "sampler": "random", "enqueue": [{"prune": 0.5, "depth": 0.5}]},
    "device": {"device": "cpu", "threads": 1, "min_repeats": 5, "max_seconds": 0.3, "batch_size": 8},
}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_user_module_by_import_path_through_the_cli(fmnist_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    cfg = tmp_path / "byo.yaml"
    cfg.write_text(yaml.safe_dump(USER))
    storage = f"sqlite:///{tmp_path / 'byo.db'}"
    main(["inspect", str(cfg)])
    printed = capsys.readouterr().out
    assert "edgecompress.testing:odd_net" in printed and "out" in printed and "depth      applies" in printed

    main(["search", str(cfg), "--study", "byo", "--storage", storage, "--no-progress"])
    study = load_study("byo", storage)
    assert study.user_attrs["model_structure"]["classifier"] == "out"  # found once, stored with the study
    df = study_to_frame(study)
    done = df[df["state"] == "COMPLETE"]
    assert len(done) >= 2, df[["state"]]
    pruned = done[done["achieved_prune"] > 0.3]
    assert len(pruned) and (pruned["macs"] < done["macs"].max()).all()

    main(["finalize", "byo", "--storage", storage, "--top", "2", "--epochs", "1"])
    trial = int(pruned.iloc[0]["number"])
    out = tmp_path / "export"
    main(["export", "byo", "--storage", storage, "--trial", str(trial), "--proxy", "--format", "onnx",
          "--preprocess", "-o", str(out)])
    doc = yaml.safe_load((out / "config.yaml").read_text())
    assert all(c["passed"] for c in doc["checks"]), doc["checks"]
    # raw stored images (uint8 N x H x W x C) straight into the exported graph answer as the model does on the
    # loader's input, and score the trial's recorded test accuracy
    sess = ort.InferenceSession(str(out / "model_preprocess.onnx"), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    raw = read_idx(fmnist_dir / FMNIST_FILES["test_images"], 3)[:300, :, :, None]
    labels = read_idx(fmnist_dir / FMNIST_FILES["test_labels"], 1)[:300]
    name, pname = sess.get_inputs()[0].name, plain.get_inputs()[0].name
    preds = np.concatenate([sess.run(None, {name: raw[i: i + 50]})[0].argmax(1) for i in range(0, 300, 50)])
    loader = ((raw[..., 0].astype(np.float32) / 255 - 0.2860) / 0.3530)[:, None]
    want = np.concatenate([plain.run(None, {pname: loader[i: i + 50]})[0].argmax(1) for i in range(0, 300, 50)])
    assert (preds == want).mean() >= 0.99
    accuracy = float((preds == labels).mean())
    assert accuracy > 0.3, accuracy  # far above chance (0.1)
    assert abs(accuracy - float(pruned.iloc[0]["test_accuracy"])) < 0.02, (accuracy, pruned.iloc[0]["test_accuracy"])

    main(["cascade", "byo", "--storage", storage, "-o", str(tmp_path / "cascade"), "--samples", "20"])
    assert (tmp_path / "cascade" / "evaluation.json").is_file()
