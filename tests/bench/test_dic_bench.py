"""bench/dic.py --smoke runs end to end and writes the keys the issue asks for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # trains a base model on 600 scenes and two 16 px configs
def test_dic_bench_smoke_writes_the_result_keys(fmnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "dic.json"
    env = {**os.environ, "EDGECOMPRESS_RUNS": str(tmp_path / "runs")}
    subprocess.run([sys.executable, str(ROOT / "bench" / "dic.py"), "--smoke", "--out", str(out), "--search", "4",
                    "--search-images", "200"], env=env,
                   check=True, cwd=ROOT, timeout=1500)
    doc = json.loads(out.read_text())
    for key in ("gain_pp_lowest_resolution", "latency_overhead_lowest_resolution", "box_iou", "per_resolution",
                "device", "command", "loadavg_1min"):
        assert key in doc, key
    (row,) = doc["per_resolution"]
    assert row["resolution_px"] == 16 and row["none"]["state"] == row["dic"]["state"] == "complete"
    assert 0.0 <= doc["box_iou"] <= 1.0 and 0 < row["box_and_crop_share"] < 1
    search = doc["search"]  # a grid search over prune x resolution x crop, both crops' trials in one study
    assert search["trials_complete"] == len(search["trials"]) == 4
    assert {t["crop"] for t in search["trials"]} <= {"none", "dic"}
    for fronts in (search["fronts_val_accuracy"], search["fronts_test_accuracy"]):
        joint = fronts["batch_1"]["joint_front"]
        assert joint and all(name.endswith((" none", " dic")) for name in joint)
    assert isinstance(doc["search_front_dominates_somewhere"], bool)


@pytest.mark.slow  # seven dynamo ONNX exports (~20 s), then a few short timing blocks
def test_dic_overhead_bench_measures_both_box_predictors(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dic_overhead", ROOT / "bench" / "dic_overhead.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    paths = mod.export_all(16, tmp_path)
    r = mod.measure(paths, 16, threads=1, batch=2, calls=3, rounds=2)
    assert set(r["fastest_block_us"]) == {"none", "dic_v1", "dic_v2", "box_crop_v1", "box_crop_v2", "resize", "empty"}
    assert all(v > 0 for v in r["fastest_block_us"].values())
    assert {"fastest_blocks", "median_paired", "box_crop_minus_resize_us"} <= set(r["overhead_v2"])
