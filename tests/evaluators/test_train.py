"""Training learns: the project's own base-model training beats chance by a wide margin on real data."""

from __future__ import annotations

import pytest

from edgecompress.evaluators.base_model import get_base_model
from edgecompress.evaluators.train import TrainProgress
from edgecompress.spaces import parse_experiment

CHANCE = 0.1  # 10 balanced classes

# ~10 s on one core of a busy 2-core machine: 4000 training images, 3 epochs of a narrow ResNet-8
LEARN = {
    "name": "learns",
    "seed": 0,
    "dataset": {"name": "fashion_mnist", "train_subset": 4000, "val_subset": 1000, "test_subset": 1000},
    "model": {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}},
    "base_training": {"epochs": 3, "batch_size": 64, "lr": 0.1, "augment": False},
    "device": {"device": "cpu", "threads": 1, "train_memory_format": "contiguous"},
}


@pytest.mark.usefixtures("fmnist_dir")
def test_base_training_beats_chance_on_fashion_mnist() -> None:
    """get_base_model (what train-base and the search run) on a real Fashion-MNIST subset: held-out test
    accuracy far above chance (observed 0.75-0.78 for seeds 0-2; a broken loss, optimiser, label order
    or data pipeline stays near 0.1), and the per-epoch progress it reports is the run's real course."""
    exp = parse_experiment(LEARN)
    reports: list[TrainProgress] = []
    base = get_base_model(exp, on_progress=reports.append)
    m = base.metrics
    assert not base.reused and m["train_images"] == 4000
    assert m["test_accuracy"] > 0.65 > 6 * CHANCE, m
    assert m["val_accuracy"] > 0.65, m
    epochs = [r for r in reports if r.epoch_end]
    assert [r.epoch for r in epochs] == [1, 2, 3] and all(r.epochs == 3 for r in epochs)
    assert epochs[0].loss > epochs[1].loss > epochs[2].loss  # it learns epoch after epoch
    assert epochs[-1].train_accuracy > 0.65 and epochs[-1].train_accuracy == m["train_accuracy"]
    assert epochs[-1].step == epochs[-1].total_steps == 3 * 63  # ceil(4000 / 64) steps per epoch
    steps = [r.step for r in reports if not r.epoch_end]
    assert steps == list(range(1, 3 * 63 + 1))  # every step reported once, in order
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(reports, reports[1:]))
    assert "epoch 3/3 loss" in epochs[-1].line("base") and "train acc" in epochs[-1].line("base")


def test_progress_line_reads_well() -> None:
    p = TrainProgress(step=10, total_steps=30, epoch=1, epochs=3, elapsed_s=41.4, epoch_end=True, loss=0.41234,
                      train_accuracy=0.8531)
    assert p.line("training base resnet8") == (
        "training base resnet8: epoch 1/3 loss 0.4123 train acc 0.8531 (41 s elapsed)")

