"""A study on a real PostgreSQL server (the `pg_server` fixture): URL handling, refusal of a foreign
experiment, the config-hash cache across workers with their own folders, and a database restart under a
storage call. The multi-process worker and fault tests are in test_pg_workers.py (slow)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from edgecompress.cli import main
from edgecompress.errors import ConfigError
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.search import run_search
from edgecompress.study import load_study
from edgecompress.study.rdb import RetryingRDBStorage, normalise_url
from edgecompress.study.storage import make_storage


def _name() -> str:
    return f"pg-{uuid.uuid4().hex[:8]}"


def test_postgresql_study_runs_and_loads_by_plain_url(pg_server, fakes, fake_evaluator, runs: Path) -> None:
    assert pg_server.url.startswith("postgresql://")
    assert normalise_url(pg_server.url).startswith("postgresql+psycopg://")
    store = make_storage(pg_server.url)
    assert isinstance(store, RetryingRDBStorage) and store.engine.dialect.driver == "psycopg"
    name = _name()
    exp = fakes.small_experiment(budget={"sampler": "random"})
    summary = run_search(exp, name, storage=pg_server.url, trials=3, evaluator=fake_evaluator)
    assert summary.stats.finished == 3
    study = load_study(name, storage=pg_server.url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for t in study.trials:  # artefacts in the (absolute) artefact store, recorded in the trial
        folder = Path(t.user_attrs["artefact_dir"])
        assert folder.is_absolute() and folder.parent.parent == runs.absolute() / name
        assert (folder / ARTEFACT_FILES["model"]).is_file()


def test_worker_with_another_experiment_is_refused_in_one_line(pg_server, fakes, fake_evaluator, tmp_path: Path,
                                                                capsys) -> None:
    name = _name()
    run_search(fakes.small_experiment(budget={"sampler": "random"}), name, storage=pg_server.url, trials=1,
               evaluator=fake_evaluator)
    other = fakes.small_experiment(seed=1)  # another seed: another experiment
    with pytest.raises(ConfigError, match="created by another experiment"):
        run_search(other, name, storage=pg_server.url, trials=2, evaluator=fake_evaluator)
    cfg = tmp_path / "other.yaml"
    cfg.write_text(yaml.safe_dump({**other.to_dict(), "dataset": {"name": "fashion_mnist", "root": "/nonexistent"}}))
    with pytest.raises(SystemExit) as e:  # refused before the (missing) data is even looked at
        main(["search", str(cfg), "--study", name, "--storage", pg_server.url, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "created by another experiment" in err[0], err
    assert len(load_study(name, storage=pg_server.url).trials) == 1


def test_cache_copies_from_another_workers_store(pg_server, fakes, tmp_path: Path) -> None:
    """Two workers with their own artefact folders: a config finished by one is served to the other from the
    cache with its files copied (not hard-linked across the workers' folders) and its location recorded."""
    name = _name()
    exp = fakes.small_experiment(budget={"sampler": "random", "enqueue_uncompressed": False})
    first = fakes.FakeEvaluator(tmp_path / "a.log")
    run_search(exp, name, storage=pg_server.url, trials=1, evaluator=first, artefacts=str(tmp_path / "store-a"))
    study = optuna.load_study(study_name=name, storage=make_storage(pg_server.url))
    study.enqueue_trial(study.trials[0].params, skip_if_exists=False)  # the same config again
    second = fakes.FakeEvaluator(tmp_path / "b.log")
    run_search(exp, name, storage=pg_server.url, trials=2, evaluator=second, artefacts=str(tmp_path / "store-b"))
    a, b = load_study(name, storage=pg_server.url).trials
    assert b.user_attrs["cached_from"] == a.number and second.calls() == []  # not trained again
    src, dst = Path(a.user_attrs["artefact_dir"]), Path(b.user_attrs["artefact_dir"])
    assert src.is_relative_to(tmp_path / "store-a") and dst.is_relative_to(tmp_path / "store-b")
    for key in ("model", "val_logits"):
        s, d = src / ARTEFACT_FILES[key], dst / ARTEFACT_FILES[key]
        assert d.read_bytes() == s.read_bytes() and d.stat().st_ino != s.stat().st_ino


def test_storage_calls_wait_for_a_restarted_server(own_pg_server, fakes, fake_evaluator) -> None:
    """A storage call made while the server is down retries with backoff and succeeds once it is back;
    what was committed before the outage is still there."""
    name = _name()
    run_search(fakes.small_experiment(budget={"sampler": "random"}), name, storage=own_pg_server.url, trials=2,
               evaluator=fake_evaluator)
    store = make_storage(own_pg_server.url)
    own_pg_server.stop()
    restart = threading.Timer(2.0, own_pg_server.start)
    restart.start()
    start = time.monotonic()
    try:
        study = optuna.load_study(study_name=name, storage=store)
        trials = study.get_trials(deepcopy=False)
    finally:
        restart.join()
    assert time.monotonic() - start >= 1.5 and store.outages >= 1
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


def test_grace_period_comes_from_the_environment(pg_server, monkeypatch) -> None:
    monkeypatch.setenv("EDGECOMPRESS_GRACE_PERIOD_S", "6")
    store = make_storage(pg_server.url)
    assert store.get_heartbeat_interval() == 1 and store.grace_period == 6
    monkeypatch.delenv("EDGECOMPRESS_GRACE_PERIOD_S")
    assert os.environ.get("EDGECOMPRESS_GRACE_PERIOD_S") is None
    assert make_storage(pg_server.url).grace_period == 120
