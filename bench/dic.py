"""Benchmark of dynamic image cropping (issue 17) on fashion_mnist_scenes (garments on 48 px textured canvases).

For each resolution on a fixed grid (16, 24, 32 px) the same compression config is evaluated twice by the real
evaluator, `crop: none` and `crop: dic`, with the same fine-tune budget: test accuracy, and latency of the whole
deployed pipeline from the raw 48 px canvas (resize, or box net + RoIAlign crop, then the classifier), measured
interleaved with the study's reference. Also: the box predictor's IoU against the ground-truth boxes (read here,
for evaluation only), the CAM boxes' IoU, and the box net's share of the DIC pipeline's latency.
With --search N: two small random searches (crop none only / crop none+dic) and whether the crop front dominates.

Usage: .venv/bin/python bench/dic.py [--epochs 2] [--search 0] [--out bench/results/dic.json]
Runs under its own runs folder (bench/data/dic-runs); the scenes cache lives in cache_root().
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("EDGECOMPRESS_RUNS", str(ROOT / "bench" / "data" / "dic-runs"))


from edgecompress.spaces import parse_experiment  # noqa: E402

RESOLUTIONS = (16, 24, 32)
NATIVE = 48
EXPERIMENT: dict[str, Any] = {
    "name": "bench-dic", "seed": 0,
    "dataset": {"name": "fashion_mnist_scenes"},
    "model": {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}},  # 2 shared cores: a quarter of the MACs
    "base_training": {"epochs": 4, "batch_size": 128, "lr": 0.1},
    "finetune": {"epochs": 2, "batch_size": 128, "lr": 0.02, "train_subset": 9000, "max_seconds": 3000},
    "space": {"prune": {"choices": [0.0]}, "bits": {"choices": [32]},
              "resolution": {"choices": [r / NATIVE for r in RESOLUTIONS]}, "crop": {"choices": ["none", "dic"]}},
    "device": {"device": "cpu", "threads": 2, "batch_size": 64},
}


def experiment(epochs: int) -> Any:
    data = dict(EXPERIMENT)
    data["finetune"] = {**EXPERIMENT["finetune"], "epochs": epochs}
    return parse_experiment(data, "bench/dic.py")
