"""Shared fixtures: every test writes runs/ artefacts under its own temporary folder, and the writable cache
(rendered scenes) under the session's; what a test needs from the machine is declared with
`@pytest.mark.needs(...)` (or by the fixtures fmnist_dir / pg_server): without CI=true a missing one skips with
its reason, with CI=true the run stops at once with one line naming it. Under CI=true only CUDA tests may skip.
"""

from __future__ import annotations

import copy
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see edgecompress/__init__.py
# the suite's cache setup: the writable cache (rendered scenes) lives in a session folder, never under ~, and
# the children tests start inherit it (the data root, read only, is left as the user has it)
SESSION_CACHE = Path(tempfile.mkdtemp(prefix="edgecompress-test-cache-"))
os.environ["EDGECOMPRESS_CACHE"] = str(SESSION_CACHE)

import pytest  # noqa: E402
import torch  # noqa: E402

# one thread: tests run beside each other on 2 cores, and 1 thread is faster for tiny models there
torch.set_num_threads(1)

CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _has_pg() -> bool:
    from edgecompress.pgserver import find_pg_bin

    return find_pg_bin() is not None


def _has_fmnist() -> bool:
    from edgecompress.evaluators.data import fmnist_folder

    return fmnist_folder() is not None


def chromium() -> str | None:
    """The headless browser the report tests drive (Debian: chromium)."""
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


# name -> (is it here?, what is missing and how to get it); the name is what @pytest.mark.needs(...) takes
NEEDS: dict[str, tuple[Callable[[], bool], str]] = {
    "postgresql": (_has_pg, "PostgreSQL (initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin): run `make services`"),
    "chromium": (lambda: chromium() is not None, "headless Chromium (chromium on PATH): run `make browser`"),
    "qemu": (lambda: shutil.which("qemu-x86_64") is not None and platform.machine() == "x86_64",
             "qemu-user on an x86_64 machine (qemu-x86_64 on PATH): run `make qemu`"),
    "fashion_mnist": (_has_fmnist, "the Fashion-MNIST dataset (Debian's dataset-fashion-mnist or $EDGECOMPRESS_DATA):"
                                   " run `make data`"),
    "cuda": (lambda: torch.cuda.is_available(), "a CUDA GPU"),
}
MAY_SKIP_IN_CI = {"cuda"}  # a CPU-only CI machine has no GPU; nothing else may be missing there
_FIXTURE_NEEDS = {"fmnist_dir": "fashion_mnist", "tiny_study": "fashion_mnist", "pg_server": "postgresql",
                  "own_pg_server": "postgresql"}


def _item_needs(item: pytest.Item) -> set[str]:
    names = {arg for m in item.iter_markers("needs") for arg in m.args}
    names |= {need for fx, need in _FIXTURE_NEEDS.items() if fx in getattr(item, "fixturenames", ())}
    unknown = names - set(NEEDS)
    if unknown:
        raise pytest.UsageError(f"{item.nodeid}: unknown needs {sorted(unknown)}; valid: {', '.join(NEEDS)}")
    return names


def _missing(name: str, _cache: dict[str, bool] = {}) -> bool:  # noqa: B006 - a per-session memo
    if name not in _cache:
        _cache[name] = not NEEDS[name][0]()
    return _cache[name]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under CI=true, stop before running anything when a selected test needs what this machine lacks."""
    if not CI:
        return
    wanted = set().union(*(_item_needs(i) for i in items)) if items else set()
    missing = sorted(n for n in wanted - MAY_SKIP_IN_CI if _missing(n))
    if missing:
        pytest.exit("CI=true: missing " + "; ".join(NEEDS[n][1] for n in missing), returncode=3)


@pytest.hookimpl(tryfirst=True)  # before the fixtures (a PostgreSQL server, the dataset) are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    for name in sorted(_item_needs(item)):
        if _missing(name):
            if CI and name not in MAY_SKIP_IN_CI:
                pytest.fail(f"CI=true: missing {NEEDS[name][1]}", pytrace=False)
            pytest.skip(f"needs {NEEDS[name][1]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Under CI=true a skip is a failure unless the test only lacks CUDA: green CI means everything ran."""
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail") and not (_item_needs(item) & MAY_SKIP_IN_CI):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: this test may not skip ({reason})"


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    """The folder the Fashion-MNIST loader itself reads (evaluators.data.fmnist_folder: $EDGECOMPRESS_DATA,
    Debian's dataset-fashion-mnist, or `edgecompress download` into the data root); a test using it needs
    "fashion_mnist" (pytest_runtest_setup skips it, or under CI=true fails the run, without the data)."""
    from edgecompress.evaluators.data import fmnist_folder

    folder = fmnist_folder()
    assert folder is not None, "pytest_runtest_setup lets no test without Fashion-MNIST get here"
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


def _start_pg_server(tmp_root: Path) -> Any:
    """A started PgServer on a free loopback port, data folder under `tmp_root`."""
    from edgecompress.pgserver import PgServer, find_pg_bin, free_port

    assert find_pg_bin() is not None, "pytest_runtest_setup lets no test without PostgreSQL get here"
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
    server = _start_pg_server(root)
    yield server
    server.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_pg_server() -> Any:
    """A PostgreSQL server for one test (the tests that stop and restart it)."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="edgecompress-pg-"))
    server = _start_pg_server(root)
    yield server
    server.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)
