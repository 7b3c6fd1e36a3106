"""Crash recovery of a running search (where studies live is edgecompress.study.storage).

RDB storages run Optuna's heartbeat (a trial whose heartbeat is older than the grace period
becomes FAIL and is re-queued as WAITING with the same params by RetryHeartbeatStaleTrialCallback).
Optuna 5's JournalStorage has no heartbeat, so every trial also records its host, pid and process start
time (system attrs "ec:*"); a RUNNING trial whose process is gone on this host is failed and re-queued the
same way (`recover_dead_trials`), for every storage kind. EDGECOMPRESS_HOSTNAME overrides the host name a
worker records (workers on one box that stand for separate machines: then only the heartbeat finds them).
`study_lock` serialises "count, then ask" between workers: a PostgreSQL advisory lock for a PostgreSQL study
(workers need share no file), else a file lock under the runs folder.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from edgecompress.study import attrs as A
from edgecompress.study.rdb import is_connection_error
from edgecompress.study.storage import MAX_RETRY
from edgecompress.utils import runs_dir


# ---- crash recovery -------------------------------------------------------------------------------
def host_name() -> str:
    """The host a worker records as its trials' owner (EDGECOMPRESS_HOSTNAME overrides the real name)."""
    return os.environ.get("EDGECOMPRESS_HOSTNAME") or socket.gethostname()


def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return f"{fields[0]}:{fields[19]}"  # state, starttime


def trial_id(storage: BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` of `study`, through the public storage API."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def mark_owner(storage: BaseStorage, study: optuna.Study, number: int) -> None:
    """Record which process runs a trial (host, pid, start time) so a dead owner can be detected."""
    pid = os.getpid()
    start = _proc_start(pid)
    tid = trial_id(storage, study, number)
    storage.set_trial_system_attr(tid, "ec:host", host_name())
    storage.set_trial_system_attr(tid, "ec:pid", pid)
    storage.set_trial_system_attr(tid, "ec:start", start.split(":")[1] if start else None)


def _owner_dead(attrs: dict[str, Any]) -> bool:
    if attrs.get("ec:host") != host_name() or "ec:pid" not in attrs:
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


def recover_dead_trials(study: optuna.Study, storage: BaseStorage) -> list[int]:
    """FAIL + re-queue RUNNING trials whose process died (pid check on this host, then RDB heartbeat);
    `storage` is the storage object `study` was loaded from."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _owner_dead(t.system_attrs):
            continue
        tid = trial_id(storage, study, t.number)
        try:
            storage.set_trial_user_attr(tid, A.STATE_DETAIL, "died")  # re-queued: not counted
            storage.set_trial_user_attr(tid, A.FAIL_REASON,
                                        f"process died (search process {t.system_attrs.get('ec:pid')} is gone)")
            if not storage.set_trial_state_values(tid, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry(study, storage.get_trial(tid))
        recovered.append(t.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return recovered


class Heartbeat:
    """Context manager recording an RDB heartbeat for one trial while it runs (no-op for other storages)."""

    def __init__(self, storage: BaseStorage, study: optuna.Study, number: int) -> None:
        self._storage = storage
        self._trial_id = trial_id(storage, study, number)
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


@contextlib.contextmanager
def study_lock(storage: BaseStorage, study_name: str, lock_path: Path) -> Iterator[None]:
    """Exclusive section for one study across workers: pg_advisory_lock on a PostgreSQL storage (held by one
    connection; retried while the server is unreachable), else a FileLock on `lock_path`."""
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        from filelock import FileLock

        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_path)):
            yield
        return
    from sqlalchemy import text

    key = zlib.crc32(f"edgecompress:{study_name}".encode()) - 2**31  # a signed 64-bit key
    delay = 0.25
    while True:
        try:
            con = engine.connect()
            con.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            break
        except Exception as e:
            if not is_connection_error(e):
                raise
            time.sleep(delay)
            delay = min(2 * delay, 10.0)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a dropped connection has released its lock already
            con.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        with contextlib.suppress(Exception):
            con.close()
