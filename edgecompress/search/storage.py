"""Where studies live: SQLite by default, a journal file for several local worker processes, any RDB URL.

Default location for study NAME (utils.runs_dir(), ./runs unless EDGECOMPRESS_RUNS is set):
    runs/NAME.journal   when it exists, or when a fresh study is run with --workers > 1
    sqlite:///runs/NAME.db   otherwise
`open_study(name)` finds a study wherever `run_search` put it by default.

Crash recovery: RDB storages run Optuna's heartbeat (a trial whose heartbeat is older than the grace period
becomes FAIL and is re-queued as WAITING with the same params by RetryHeartbeatStaleTrialCallback).
Optuna 5's JournalStorage has no heartbeat, so every trial also records its host, pid and process start
time (system attrs "ec:*"); a RUNNING trial whose process is gone on this host is failed and re-queued the
same way (`recover_dead_trials`), for every storage kind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from edgecompress.errors import ConfigError
from edgecompress.utils import runs_dir

HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 120
MAX_RETRY = 1  # a trial whose search process died is re-queued once: a config that died twice is not
_JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")


def default_storage_url(study_name: str, workers: int = 1) -> str:
    """The storage a study uses when none is given (see the module docstring)."""
    _check_name(study_name)
    journal = runs_dir() / f"{study_name}.journal"
    db = runs_dir() / f"{study_name}.db"
    if journal.exists() or (workers > 1 and not db.exists()):
        return str(journal)
    return f"sqlite:///{db}"


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or url.endswith(_JOURNAL_SUFFIXES)


def make_storage(url: str, heartbeat: bool = True) -> BaseStorage:
    """Storage object for a URL: a journal file path, or an SQLAlchemy URL (sqlite://, postgresql://...)."""
    if is_journal(url):
        path = Path(url.removeprefix("journal://").removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError(
            f"--storage {url!r}: expected an SQLAlchemy URL (sqlite:///x.db, postgresql://...) or a "
            f"journal file path ending in {'/'.join(_JOURNAL_SUFFIXES)}"
        )
    if url.startswith("sqlite:///"):
        _prepare_sqlite(Path(url.removeprefix("sqlite:///")))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):  # several processes may write: wait for the lock instead of failing
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat:
            kwargs.update(
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
        try:
            storage = RDBStorage(url, **kwargs)
        except Exception as e:  # noqa: BLE001 - bad URL, missing driver, unreachable server
            raise ConfigError(f"--storage {url!r}: cannot open ({type(e).__name__}: {e})") from None
    if url.startswith("sqlite"):
        from sqlalchemy import event

        event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # later connections get the pragmas
    return storage


def _prepare_sqlite(path: Path) -> None:
    """Create the file in WAL mode: one fsync per commit instead of three (Optuna commits every attr)."""
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as con:
        con.execute("PRAGMA journal_mode=WAL")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL + synchronous=NORMAL: commits survive a killed process; only a power cut may lose the last."""
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def open_study(study_name: str, storage: str | None = None) -> optuna.Study:
    """Load an existing study (default storage when `storage` is None); ConfigError when it is absent."""
    url = storage or default_storage_url(study_name)
    if storage is None and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise ConfigError(f"study {study_name!r} not found: no {url.removeprefix('sqlite:///')} or .journal")
    store = make_storage(url, heartbeat=False)
    try:
        return optuna.load_study(study_name=study_name, storage=store)
    except KeyError:
        raise ConfigError(f"study {study_name!r} not found in {url}") from None


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"--study {name!r}: a study name must be non-empty, without '/', not start with '.'")


# ---- crash recovery -------------------------------------------------------------------------------
def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return f"{fields[0]}:{fields[19]}"  # state, starttime


def mark_owner(study: optuna.Study, trial_id: int) -> None:
    """Record which process runs a trial (host, pid, start time) so a dead owner can be detected."""
    pid = os.getpid()
    start = _proc_start(pid)
    study._storage.set_trial_system_attr(trial_id, "ec:host", socket.gethostname())
    study._storage.set_trial_system_attr(trial_id, "ec:pid", pid)
    study._storage.set_trial_system_attr(trial_id, "ec:start", start.split(":")[1] if start else None)


def _owner_dead(attrs: dict[str, Any]) -> bool:
    if attrs.get("ec:host") != socket.gethostname() or "ec:pid" not in attrs:
        return False  # another machine: the RDB heartbeat handles it
    pid = int(attrs["ec:pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    info = _proc_start(pid)
    if info is None:
        return False
    state, start = info.split(":")
    return state in ("Z", "X") or (attrs.get("ec:start") is not None and start != attrs["ec:start"])


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """FAIL + re-queue RUNNING trials whose process died (pid check on this host, then RDB heartbeat)."""
    storage = study._storage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _owner_dead(t.system_attrs):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "state_detail", "died")  # re-queued: not counted
            storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                        f"process died (search process {t.system_attrs.get('ec:pid')} is gone)")
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry(study, storage.get_trial(t._trial_id))
        recovered.append(t.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return recovered


class Heartbeat:
    """Context manager recording an RDB heartbeat for one trial while it runs (no-op for other storages)."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self._storage = study._storage
        self._trial_id = trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        interval = getattr(self._storage, "get_heartbeat_interval", lambda: None)()
        if interval:
            self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
            self._thread.start()
        return self

    def _beat(self, interval: int) -> None:
        while True:
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception:  # noqa: BLE001 - a missed beat must not kill the trial
                pass
            if self._stop.wait(interval):
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def iter_storage_files(study_name: str) -> Iterator[Path]:
    """Default storage files of a study that exist (for cleanup and messages)."""
    for p in (runs_dir() / f"{study_name}.db", runs_dir() / f"{study_name}.journal"):
        if p.exists():
            yield p
