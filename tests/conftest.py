"""Shared fixtures: every test writes runs/ artefacts under its own temporary folder."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see edgecompress/__init__.py

import pytest  # noqa: E402
import torch  # noqa: E402

# one thread: tests run beside each other on 2 cores, and 1 thread is faster for tiny models there
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    """The folder the Fashion-MNIST loader itself reads (evaluators.data.fmnist_folder: $EDGECOMPRESS_DATA,
    Debian's dataset-fashion-mnist, or `make data`'s download into ~/.cache/edgecompress); the test is
    skipped, with the reason, only when the loader finds the data nowhere."""
    from edgecompress.evaluators.data import fmnist_candidates, fmnist_folder

    folder = fmnist_folder()
    if folder is None:
        pytest.skip("Fashion-MNIST not found where the loader looks ("
                    + ", ".join(map(str, fmnist_candidates(None))) + "): run `make data`")
    return folder


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path_factory.mktemp("runs")
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(runs))
    # empty = the runs folder; set through monkeypatch so a Ray trial run in-process (Locations.apply) cannot
    # leak its artefact store into later tests
    monkeypatch.setenv("EDGECOMPRESS_ARTEFACTS", "")


TINY_PIPELINE = {
    "name": "tiny-pipeline",
    "seed": 0,
    "dataset": {"name": "fashion_mnist", "train_subset": 600, "val_subset": 300, "test_subset": 300},
    "model": {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}},
    "base_training": {"epochs": 2, "batch_size": 64, "lr": 0.1},
    "finetune": {"epochs": 1, "batch_size": 64, "train_subset": 300},
    "space": {"prune": {"choices": [0.0, 0.5]}, "bits": {"choices": [32, 8]},
              "resolution": {"choices": [0.5, 1.0]}, "round_to": 2},
    "budget": {"trials": 5, "sampler": "random",
               "enqueue": [{"prune": 0.5, "resolution": 0.5}, {"prune": 0.0, "resolution": 0.5}]},
    "device": {"device": "cpu", "threads": 1, "min_repeats": 5, "max_seconds": 0.3, "batch_size": 8},
}


@pytest.fixture
def tiny_pipeline() -> Callable[..., dict[str, Any]]:
    """TINY_PIPELINE for a test to vary: `tiny_pipeline(name=..., budget={...})` is a deep copy with those top-level
    keys replaced (whole values, not merged), so nested values can also be changed on the result in place."""

    def make(**changes: Any) -> dict[str, Any]:
        unknown = set(changes) - set(TINY_PIPELINE)
        if unknown:
            raise KeyError(f"TINY_PIPELINE has no key {sorted(unknown)}")
        return {**copy.deepcopy(TINY_PIPELINE), **copy.deepcopy(changes)}

    return make


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory, fmnist_dir: Path) -> dict:
    """A real 5-trial study on a Fashion-MNIST subset (real evaluator, SQLite), built once per session.

    Returns {"name", "storage", "runs", "config"}; tests pass `--storage` explicitly.
    """
    import yaml

    from edgecompress.search import run_search
    from edgecompress.spaces import parse_experiment

    runs = tmp_path_factory.mktemp("tiny-study-runs")
    old = os.environ.get("EDGECOMPRESS_RUNS")
    os.environ["EDGECOMPRESS_RUNS"] = str(runs)
    try:
        exp = parse_experiment(TINY_PIPELINE)
        storage = f"sqlite:///{runs}/tiny.db"
        run_search(exp, "tiny", storage=storage, trials=5, seed=0)
    finally:
        if old is None:
            os.environ.pop("EDGECOMPRESS_RUNS", None)
        else:
            os.environ["EDGECOMPRESS_RUNS"] = old
    cfg = runs / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY_PIPELINE))
    return {"name": "tiny", "storage": storage, "runs": runs, "config": cfg}


def _pg_server_or_skip(tmp_root: Path) -> Any:
    """A started PgServer on a free loopback port, data folder under `tmp_root` (skip: no PostgreSQL)."""
    from edgecompress.pgserver import PgServer, find_pg_bin, free_port

    if find_pg_bin() is None:
        pytest.skip("PostgreSQL not installed (no initdb/pg_ctl): run `make services`")
    pytest.importorskip("psycopg", reason="the psycopg driver is not installed: pip install 'psycopg[binary]'")
    server = PgServer(tmp_root / "pgdata", free_port())
    server.start()
    return server


@pytest.fixture(scope="session")
def pg_server() -> Any:
    """One PostgreSQL server for the session (loopback port, data in a temporary folder, stopped after);
    as root, initdb/postgres run as the `postgres` user. Tests use their own study names in it."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="edgecompress-pg-"))
    server = _pg_server_or_skip(root)
    yield server
    server.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_pg_server() -> Any:
    """A PostgreSQL server for one test (the tests that stop and restart it)."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="edgecompress-pg-"))
    server = _pg_server_or_skip(root)
    yield server
    server.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)
