"""Benchmark: train the demo base model from scratch (as `make demo` does) and record accuracy and time.

Usage: .venv/bin/python bench/base.py [--config configs/fmnist-quick.yaml] [--out bench/results/base.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecompress.evaluators.base_model import get_base_model  # noqa: E402
from edgecompress.runtime.latency import cpu_name  # noqa: E402
from edgecompress.spaces import load_experiment  # noqa: E402
from edgecompress.utils import atomic_write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/fmnist-quick.yaml")
    ap.add_argument("--out", default="bench/results/base.json")
    args = ap.parse_args()
    exp = load_experiment(args.config)
    torch.set_num_threads(exp.device.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EDGECOMPRESS_RUNS"] = tmp
        t0 = time.perf_counter()
        base = get_base_model(exp, force=True)
        wall = time.perf_counter() - t0
    m = base.metrics
    result = {
        "test_accuracy": m["test_accuracy"],
        "val_accuracy": m["val_accuracy"],
        "train_seconds": m["train_seconds"],
        "wall_seconds_with_data_and_eval": round(wall, 2),
        "epochs": m["epochs"],
        "model": m["model"],
        "dataset": m["dataset"],
        "train_images": m["train_images"],
        "recipe": exp.base_training.model_dump(),
        "device": f"cpu: {cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "command": f"python bench/base.py --config {args.config}",
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_json(args.out, result)
    print(f"test accuracy {result['test_accuracy']:.4f}, {result['train_seconds']} s to train -> {args.out}")


if __name__ == "__main__":
    main()
