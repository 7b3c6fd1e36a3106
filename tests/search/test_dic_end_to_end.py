"""A space with `crop: [none, dic]` on fashion_mnist_scenes searches, finalizes and exports (one ONNX graph)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgecompress.cli import main
from edgecompress.study import load_study, study_to_frame

SCENES_TINY = {
    "name": "tiny-dic", "seed": 0,
    "dataset": {"name": "fashion_mnist_scenes", "train_subset": 600, "val_subset": 200, "test_subset": 200},
    "model": {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}},
    "base_training": {"epochs": 2, "batch_size": 64, "lr": 0.1},
    "finetune": {"epochs": 1, "batch_size": 64, "train_subset": 200, "bn_recalibration_images": 128},
    "space": {"prune": {"choices": [0.0]}, "bits": {"choices": [32]}, "resolution": {"choices": [0.5, 1.0]},
              "crop": {"choices": ["none", "dic"]}},
    "budget": {"trials": 3, "sampler": "random",
               "enqueue": [{"resolution": 0.5, "crop": "dic"}, {"resolution": 0.5, "crop": "none"}]},
    "device": {"device": "cpu", "threads": 1, "min_repeats": 5, "max_seconds": 0.3, "batch_size": 8},
}


@pytest.mark.slow  # renders the scenes once (~30 s on a fresh cache), trains a base model at 48 px
def test_crop_space_searches_finalizes_and_exports(fmnist_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(SCENES_TINY))
    storage = f"sqlite:///{tmp_path / 'dic.db'}"
    main(["search", str(cfg), "--study", "dic", "--storage", storage, "--no-progress"])
    df = study_to_frame(load_study("dic", storage))
    done = df[df["state"] == "COMPLETE"]
    crops = set(done["cfg_crop"].fillna("none")) if "cfg_crop" in done else set()
    assert {"none", "dic"} <= crops, crops
    dic_row = done[done["cfg_crop"] == "dic"].iloc[0]
    assert dic_row["pipeline_input_size"] == 48 and dic_row["input_size"] == 24
    none_row = done[(done["cfg_crop"].fillna("none") == "none") & (done["input_size"] == 24)].iloc[0]
    assert none_row["pipeline_input_size"] == 48  # both measured from the raw canvas
    assert dic_row["macs"] > none_row["macs"]  # the box net's MACs count
    main(["pareto", "dic", "--storage", storage, "--all"])
    assert "24 dic" in capsys.readouterr().out
    main(["finalize", "dic", "--storage", storage, "--top", "2", "--epochs", "1"])
    out = tmp_path / "export"
    main(["export", "dic", "--storage", storage, "--trial", str(int(dic_row["number"])), "--proxy",
          "--format", "onnx", "-o", str(out)])
    doc = yaml.safe_load((out / "config.yaml").read_text())
    assert doc["compression"]["crop"] == "dic" and doc["input"]["size"] == 48
    onnx_check = next(c for c in doc["checks"] if c["name"] == "onnx")
    assert onnx_check["passed"] and onnx_check["agreement"] == 1.0 and onnx_check["max_abs_diff"] < 1e-3
    assert any("crop: dic" in n for n in doc["notes"])
