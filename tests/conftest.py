"""Shared fixtures: every test writes runs/ artefacts under its own temporary folder."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path_factory.mktemp("runs")
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(runs))
