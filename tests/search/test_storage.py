"""Storage: default locations, URL handling, dead-owner recovery, heartbeat configuration."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage
from optuna.trial import TrialState

from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.search.recovery import mark_owner, recover_dead_trials, trial_id
from edgecompress.study.storage import HEARTBEAT_INTERVAL_S, default_storage_url, load_study, make_storage


def test_default_storage_sqlite_or_journal(runs: Path) -> None:
    assert default_storage_url("a") == f"sqlite:///{runs / 'a.db'}"
    assert default_storage_url("a", workers=2) == str(runs / "a.journal")
    (runs / "b.db").write_bytes(b"")
    assert default_storage_url("b", workers=2).startswith("sqlite:///")  # an existing study keeps its storage
    (runs / "c.journal").write_bytes(b"")
    assert default_storage_url("c") == str(runs / "c.journal")
    with pytest.raises(ConfigError, match="study name 'x/y'"):
        default_storage_url("x/y")


def test_make_storage_kinds(runs: Path) -> None:
    rdb = make_storage(f"sqlite:///{runs / 'h.db'}")
    assert isinstance(rdb, RDBStorage) and rdb.get_heartbeat_interval() == HEARTBEAT_INTERVAL_S
    assert isinstance(make_storage(str(runs / "j.journal")), JournalStorage)
    with pytest.raises(ConfigError, match="`storage` 'nonsense'"):
        make_storage("nonsense")
    with pytest.raises(EdgeCompressError, match="not found"):
        load_study("missing")


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_running_trial_of_dead_process_is_failed_and_requeued(runs: Path, kind: str) -> None:
    url = f"sqlite:///{runs / 'd.db'}" if kind == "sqlite" else str(runs / "d.journal")
    store = make_storage(url)
    study = optuna.create_study(study_name="d", storage=store)
    dead = study.ask()
    dead.suggest_float("x", 0, 1)
    mark_owner(store, study, dead.number)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a reaped process: its pid is free
    store.set_trial_system_attr(trial_id(store, study, dead.number), "ec:pid", gone.pid)
    alive = study.ask()
    mark_owner(store, study, alive.number)  # this process: alive, must be left alone
    assert recover_dead_trials(study, store) == [dead.number]
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[alive.number].state == TrialState.RUNNING
    retry = trials[-1]
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == dead.number
    assert retry.params == trials[dead.number].params
    assert recover_dead_trials(study, store) == []


def test_a_finished_search_study_loads_in_a_new_process(runs: Path) -> None:
    """A WAL-mode SQLite study whose writer closed (no -wal/-shm left) must load: `pareto` after `search`."""
    import sys

    url = f"sqlite:///{runs / 'done.db'}"
    code = ("from edgecompress.study.storage import make_storage\nimport optuna\n"
            f"s = optuna.create_study(study_name='done', storage=make_storage({url!r}))\n"
            "s.optimize(lambda t: t.suggest_float('x', 0, 1), n_trials=2)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert not (runs / "done.db-wal").exists()  # the writer closed: what a later `pareto` process finds
    assert len(load_study("done").trials) == 2


@pytest.mark.parametrize("message", [
    "(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num",
    "(sqlite3.OperationalError) table studies already exists",
])
def test_storage_opened_while_another_process_creates_it_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     message: str) -> None:
    """Seen on CI: a second process opened the SQLite study while `search` created it; both wrote the schema and
    the loser raised. make_storage tries again (the tables are there by then) instead of failing the search."""
    import sqlalchemy.exc

    import edgecompress.study.storage as st

    real = st.RetryingRDBStorage
    calls = []

    def racing(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 1:
            kind = sqlalchemy.exc.IntegrityError if "Integrity" in message else sqlalchemy.exc.OperationalError
            raise kind("INSERT ...", {}, Exception(message))
        return real(*a, **k)

    monkeypatch.setattr(st, "RetryingRDBStorage", racing)
    monkeypatch.setattr(st.time, "sleep", lambda s: None)
    storage = make_storage(f"sqlite:///{tmp_path / 'race.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []
    # any other error is still one line, at once
    calls.clear()
    monkeypatch.setattr(st, "RetryingRDBStorage", lambda *a, **k: (_ for _ in ()).throw(
        sqlalchemy.exc.OperationalError("SELECT", {}, Exception("disk I/O error"))))
    with pytest.raises(ConfigError, match="cannot open .*disk I/O error"):
        make_storage(f"sqlite:///{tmp_path / 'other.db'}")
