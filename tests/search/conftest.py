"""Search fixtures: a cheap deterministic evaluator (analytic metrics, real artefact files) and experiments."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from edgecompress.evaluators.result import ARTEFACT_FILES, EvalResult
from edgecompress.spaces.config import CompressionConfig
from edgecompress.spaces.experiment import ExperimentConfig, parse_experiment


def fake_metrics(config: CompressionConfig) -> dict[str, Any]:
    """Accuracy falls and latency falls with compression: a real trade-off, fully deterministic."""
    prune = float(np.mean(config.stage_prune(3)))
    depth = 1.0 if not isinstance(config.depth, tuple) else sum(config.depth) / 3
    r = config.resolution
    low_bits = {32: 0.0, 16: 0.0, 8: 0.01, 4: 0.06}.get(config.w_bits, 0.1)
    acc = 0.92 - 0.25 * prune**2 - 0.08 * (1 - r) ** 2 - low_bits - 0.05 * (1 - depth)
    lat = 1.0 * (1 - prune) ** 2 * r**2 * (0.45 if config.w_bits <= 8 else 1.0) * (0.4 + 0.6 * depth)
    return {"accuracy": round(acc, 6), "latency_ms": round(lat + 0.01, 6), "macs": int(1e6 * lat),
            "size_bytes": int(1e5 * (1 - prune) * config.w_bits / 32), "latency_source": "measured"}


class FakeEvaluator:
    """Evaluator-protocol fake. Appends each evaluated config hash to `log` (works across processes)."""

    def __init__(self, log: Path, delay: float = 0.0, fail: Callable[[CompressionConfig], bool] | None = None,
                 epochs: int = 2, max_latency_ms: float | None = None, block_after: int | None = None) -> None:
        """`block_after`: evaluations after that many hang (10 min), so a test can kill a search mid-trial
        without racing the trials (duplicates served from the cache finish at once)."""
        self.log = Path(log)
        self.block_after = block_after
        self.delay = delay
        self.fail = fail
        self.epochs = epochs
        self.max_latency_ms = max_latency_ms

    def calls(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def __call__(self, config: CompressionConfig, artefact_dir: Path | None = None,
                 on_epoch: Callable[[int, float], None] | None = None) -> EvalResult:
        done = len(self.calls())
        with open(self.log, "a") as f:
            f.write(config.config_hash() + "\n")
        if self.block_after is not None and done >= self.block_after:
            time.sleep(600)
        metrics = fake_metrics(config)
        if self.fail is not None and self.fail(config):
            return EvalResult(config=config, state="failed", fail_reason="TrainingDivergedError: loss is NaN")
        if self.max_latency_ms is not None and metrics["latency_ms"] > self.max_latency_ms:
            v = metrics["latency_ms"] - self.max_latency_ms
            partial = {k: v for k, v in metrics.items() if k != "accuracy"}
            return EvalResult(config=config, state="infeasible", metrics=partial,
                              violations={"max_latency_ms": v})
        for epoch in range(self.epochs):
            if self.delay:
                time.sleep(self.delay / max(1, self.epochs))
            if on_epoch is not None:
                on_epoch(epoch, metrics["accuracy"] * (epoch + 1) / self.epochs)
        if artefact_dir is not None:
            write_fake_artefacts(Path(artefact_dir), config)
        return EvalResult(config=config, metrics=metrics)


def write_fake_artefacts(folder: Path, config: CompressionConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(config.config_hash(), 16) % 2**32)
    torch.save({"w": torch.zeros(2)}, folder / ARTEFACT_FILES["model"])
    for split in ("val", "test"):
        np.save(folder / ARTEFACT_FILES[f"{split}_logits"], rng.normal(size=(8, 10)).astype(np.float32))
        np.save(folder / ARTEFACT_FILES[f"{split}_labels"], rng.integers(0, 10, 8))


def small_experiment(**over: Any) -> ExperimentConfig:
    """A tiny experiment: resnet8 (3 stages of 1 block), a 4 x 2 x 2 = 16-point discrete space."""
    data: dict[str, Any] = {
        "name": "fake",
        "seed": 0,
        "model": {"name": "resnet8"},
        "space": {"prune": {"choices": [0.0, 0.25, 0.5, 0.75]}, "bits": {"choices": [32, 8]},
                  "resolution": {"choices": [0.5, 1.0]}},
        "budget": {"trials": 6, "sampler": "tpe", "population": 4},
    }
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_experiment(data, "<test>")


@pytest.fixture
def fake_evaluator(tmp_path: Path) -> FakeEvaluator:
    return FakeEvaluator(tmp_path / "calls.log")


@pytest.fixture
def runs() -> Path:
    return Path(os.environ["EDGECOMPRESS_RUNS"])


def read_metrics(folder: Path) -> dict[str, Any]:
    return json.loads((folder / ARTEFACT_FILES["metrics"]).read_text())


@pytest.fixture
def fakes() -> SimpleNamespace:
    """The helpers of this file (test modules cannot import a conftest by name)."""
    return SimpleNamespace(FakeEvaluator=FakeEvaluator, fake_metrics=fake_metrics, read_metrics=read_metrics,
                           small_experiment=small_experiment, write_fake_artefacts=write_fake_artefacts,
                           path=Path(__file__))
