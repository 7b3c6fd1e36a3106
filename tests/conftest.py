"""Shared fixtures: every test writes runs/ artefacts under its own temporary folder."""

from __future__ import annotations

import pytest
import torch

# one thread: tests run beside each other on 2 cores, and 1 thread is faster for tiny models there
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path_factory.mktemp("runs")
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(runs))
