"""Writes tests/data/old_study with the code of commit d74186f (before the issue-27 changes): a 4-trial study.

    git worktree add /tmp/oldtree d74186f
    cd /tmp/oldtree && PYTHONPATH=/tmp/oldtree /path/to/.venv/bin/python tests/.../make_old_study.py
    then copy /tmp/ec-old-study/old.db and runs/old/trials/ here (tests/results/test_old_study.py)
"""

from __future__ import annotations

import os

CFG = {
    "name": "old-study", "seed": 0,
    "dataset": {"name": "fashion_mnist", "train_subset": 600, "val_subset": 300, "test_subset": 300},
    "model": {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}},
    "base_training": {"epochs": 2, "batch_size": 64, "lr": 0.1},
    "finetune": {"epochs": 1, "batch_size": 64, "train_subset": 300},
    "space": {"prune": {"choices": [0.0, 0.5]}, "bits": {"choices": [32, 8]},
              "resolution": {"choices": [0.5, 1.0]}, "round_to": 2},
    "budget": {"trials": 4, "sampler": "random",
               "enqueue": [{"prune": 0.5, "resolution": 0.5, "w_bits": 8, "a_bits": 8},
                           {"prune": 0.0, "resolution": 0.5}]},
    "device": {"device": "cpu", "threads": 1, "min_repeats": 5, "max_seconds": 0.3, "batch_size": 8},
}

if __name__ == "__main__":
    import edgecompress

    assert edgecompress.__file__.startswith("/tmp/oldtree/"), edgecompress.__file__
    os.environ["EDGECOMPRESS_RUNS"] = "/tmp/ec-old-study/runs"
    from edgecompress.search import run_search
    from edgecompress.spaces import parse_experiment

    summary = run_search(parse_experiment(CFG), "old", storage="sqlite:////tmp/ec-old-study/old.db", trials=4, seed=0)
    print(summary.stats)
