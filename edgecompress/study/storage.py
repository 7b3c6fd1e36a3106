"""Where studies live, in one place: default locations, storage objects for URLs and paths, loading.

Default location for study NAME (utils.runs_dir(), ./runs unless EDGECOMPRESS_RUNS is set):
    runs/NAME.journal   when it exists, or when a fresh study is run with --workers > 1
    sqlite:///runs/NAME.db   otherwise
`load_study(name)` finds a study wherever the search put it by default; it also takes a storage URL
(sqlite:///x.db, postgresql://..., journal:path) or a .db/.journal path.

RDB storages made by `make_storage(url, heartbeat=True)` run Optuna's heartbeat: a trial whose heartbeat
is older than the grace period (edgecompress.study.rdb.heartbeat_settings) becomes FAIL and is re-queued once
(RetryHeartbeatStaleTrialCallback); their calls retry with backoff while the database server is unreachable
(rdb.RetryingRDBStorage). `postgresql://` URLs are normalised to the psycopg 3 driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from edgecompress.errors import ConfigError, EdgeCompressError, StorageError
from edgecompress.study.rdb import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    RetryingRDBStorage,
    heartbeat_settings,
    normalise_url,
)
from edgecompress.utils import runs_dir

FINAL_SUFFIX = "-final"  # finalize writes <study>-final into the search study's storage

__all__ = [
    "GRACE_PERIOD_S", "HEARTBEAT_INTERVAL_S", "JOURNAL_SUFFIXES", "MAX_RETRY", "StudyLocation",
    "check_storage_file", "check_storage_url", "check_study_name", "default_storage_url", "is_journal",
    "list_local_studies", "load_study", "make_storage", "storage_for_path", "study_location",
]

MAX_RETRY = 1  # a trial whose search process died is re-queued once: a config that died twice is not
JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def check_storage_file(path: str | os.PathLike[str]) -> None:
    """StorageError (one line, naming the file) when `path` exists but is not what a study storage reads
    there: an Optuna journal (JSON lines) for .journal/.log/.jsonl, else an SQLite database. A missing
    or empty file passes: the storage creates it."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir():
        raise StorageError(f"{path}: a folder, not a study storage file")
    journal = path.suffix in JOURNAL_SUFFIXES
    try:
        with open(path, "rb") as f:
            head = f.readline(1 << 20) if journal else f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise StorageError(f"{path}: cannot read ({e.strerror or e})") from None
    if not head:
        return
    if journal:
        try:
            ok = "op_code" in json.loads(head)
        except (ValueError, TypeError):  # not JSON, or JSON but not an object
            ok = False
        if not ok:
            raise StorageError(f"{path}: not an Optuna journal file (its first line is not a journal record)")
    elif head != SQLITE_MAGIC:
        raise StorageError(f"{path}: not an SQLite database (a study storage is an Optuna SQLite .db file "
                           f"or a {'/'.join(JOURNAL_SUFFIXES)} journal)")


def default_storage_url(study_name: str, workers: int = 1) -> str:
    """The storage a study uses when none is given (see the module docstring)."""
    check_study_name(study_name)
    journal = runs_dir() / f"{study_name}.journal"
    db = runs_dir() / f"{study_name}.db"
    if journal.exists() or (workers > 1 and not db.exists()):
        return str(journal)
    return f"sqlite:///{db}"


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES)


def check_storage_url(url: str) -> None:
    """What `make_storage(url)` checks before it creates anything: the URL's form (ConfigError) and, for a
    journal or SQLite file that exists, its content (StorageError). Nothing is created or connected to."""
    if is_journal(url):
        check_storage_file(url.removeprefix("journal://").removeprefix("journal:"))
        return
    if "://" not in url:
        raise ConfigError(
            f"`storage` {url!r}: expected an SQLAlchemy URL (sqlite:///x.db, postgresql://...) or a "
            f"journal file path ending in {'/'.join(JOURNAL_SUFFIXES)}"
        )
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        check_storage_file(url.removeprefix("sqlite:///"))


def make_storage(url: str, heartbeat: bool = True) -> BaseStorage:
    """Storage object for a URL: a journal file path, or an SQLAlchemy URL (sqlite://, postgresql://...)."""
    check_storage_url(url)
    if is_journal(url):
        path = Path(url.removeprefix("journal://").removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        _prepare_sqlite(Path(url.removeprefix("sqlite:///")))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):  # several processes may write: wait for the lock instead of failing
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:  # a server: check pooled connections before use (they die when the server restarts)
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat:
            interval, grace = heartbeat_settings()
            kwargs.update(
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
        for attempt in range(5):
            try:
                storage = RetryingRDBStorage(normalise_url(url), **kwargs)
                break
            except Exception as e:  # noqa: BLE001 - bad URL, missing driver, unreachable server
                if attempt < 4 and _schema_race(e):  # workers started at once on an empty database
                    time.sleep(0.2 + random.random())
                    continue
                raise ConfigError(f"`storage` {url!r}: cannot open ({_first_line(e)})") from None
    if url.startswith("sqlite"):
        from sqlalchemy import event

        event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # later connections get the pragmas
    return storage


def _schema_race(e: BaseException) -> bool:
    """Another process created Optuna's tables while this one did (a retry then finds them): "already exists"
    (PostgreSQL; SQLite raises it as an OperationalError), or both inserted the schema version row (SQLite:
    "UNIQUE constraint failed: alembic_version.version_num", seen when `pareto` opened a study being created)."""
    from sqlalchemy import exc

    text = str(e)
    return (isinstance(e, (exc.IntegrityError, exc.ProgrammingError, exc.OperationalError))
            and ("already exists" in text or "alembic_version" in text))


def _prepare_sqlite(path: Path) -> None:
    """Create the file in WAL mode: one fsync per commit instead of three (Optuna commits every attr)."""
    import sqlite3

    check_storage_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as con:
            con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as e:
        raise StorageError(f"{path}: cannot open as an SQLite database ({e})") from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL + synchronous=NORMAL: commits survive a killed process; only a power cut may lose the last."""
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def check_study_name(name: str) -> None:
    """A study name is usable as a file name under runs/ (ConfigError otherwise)."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"study name {name!r}: must be non-empty, without '/', not start with '.'")


# ---- loading --------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _has_optuna_tables(path: Path) -> bool:
    """Whether an SQLite file holds Optuna's schema, read without writing (a new file: False)."""
    import sqlite3

    try:
        # a plain read: never mode=ro, which cannot open a WAL database once its last writer closed (SQLite must
        # create the -wal/-shm files then): every study file after its search ended
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as con:
            return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'studies'").fetchone() \
                is not None
    except sqlite3.Error as e:
        raise StorageError(f"{path}: cannot read as an SQLite database ({e})") from None


def _list_studies(storage: Any, where: str) -> list[str]:
    """Study names in a storage; StorageError naming `where` when the storage cannot be read."""
    try:
        return sorted(optuna.get_all_study_names(storage))
    except Exception as e:  # noqa: BLE001 - SQLAlchemy, driver and file errors: one line, not a traceback
        raise StorageError(f"{where}: cannot read the study storage ({_first_line(e)})") from None


def _journal(path: Path) -> Any:
    check_storage_file(path)
    return JournalStorage(JournalFileBackend(str(path)))


def storage_for_path(path: str | os.PathLike[str]) -> Any:
    """Storage for a file: a JournalStorage for .journal/.log/.jsonl, else an sqlite:/// URL."""
    path = Path(path)
    if path.suffix in JOURNAL_SUFFIXES:
        return _journal(path)
    check_storage_file(path)
    return f"sqlite:///{path}"


def list_local_studies() -> list[str]:
    """Names of the studies stored under runs/ by default."""
    root = runs_dir()
    if not root.is_dir():
        return []
    return sorted(p.stem for p in root.iterdir() if p.suffix in (".db", *JOURNAL_SUFFIXES))


FIDELITIES = ("auto", "final", "proxy")


@dataclass
class StudyLocation:
    """A loaded study and where it lives: `url` is a string `make_storage` accepts (None when the caller
    gave a storage object), so a linked study (e.g. `<study>-final`) can be written beside it."""

    study: optuna.Study
    url: str | None
    names: list[str]  # every study in that storage


def load_study(name_or_url: str | os.PathLike[str] | optuna.Study, storage: Any = None, *,
               final: str = "auto") -> optuna.Study:
    """Open a stored study.

    A bare name maps to <runs_dir()>/<name>.journal when it exists, else sqlite:///<runs_dir()>/<name>.db
    (the search's default); a storage URL (`sqlite:///x.db`, `postgresql://...`,
    `journal:path`) or a .db/.journal path opens the only study there (a search study and its
    `-final` twin count as one); with `storage` given, `name_or_url` is the study name in it (a URL/path
    string or an Optuna storage object). `final`: "auto" opens `<name>-final` instead when finalize
    wrote complete trials there, "final" requires it, "proxy" opens the search study itself.
    """
    return study_location(name_or_url, storage, final=final).study


def study_location(name_or_url: str | os.PathLike[str] | optuna.Study, storage: Any = None, *,
                   final: str = "auto") -> StudyLocation:
    """`load_study`, also returning the storage URL and the studies stored there."""
    if final not in FIDELITIES:
        raise ConfigError(f"final: expected one of {', '.join(FIDELITIES)}, got {final!r}")
    if isinstance(name_or_url, optuna.Study):
        return StudyLocation(name_or_url, None, [name_or_url.study_name])
    text = str(name_or_url)
    study_name: str | None
    where: str
    if storage is not None:
        store = storage
        if isinstance(storage, str) and storage.startswith("journal:"):
            store = _journal(Path(storage.removeprefix("journal://").removeprefix("journal:")))
        elif isinstance(storage, str) and "://" not in storage:
            store = storage_for_path(Path(storage))
        study_name, where = text, str(storage)
    elif text.startswith("journal:"):
        path = Path(text.removeprefix("journal://").removeprefix("journal:"))
        if not path.exists():
            raise EdgeCompressError(f"no study storage at {text}: {path} does not exist")
        study_name, store, where = None, _journal(path), text
    elif "://" in text:
        study_name, store, where = None, text, text
        if text.startswith("sqlite:///") and text != "sqlite:///:memory:":
            db = Path(text[len("sqlite:///") :])
            if not db.exists():
                raise EdgeCompressError(f"no study storage at {text}: {db} does not exist")
    elif text.endswith((".db", *JOURNAL_SUFFIXES)) or os.sep in text:
        path = Path(text)
        if not path.exists():
            raise EdgeCompressError(f"no study storage at {path}: the file does not exist")
        study_name, store, where = None, storage_for_path(path), str(path)
    else:
        root = runs_dir()
        candidates = [root / f"{text}.journal", root / f"{text}.db"]
        candidates += [root / f"{text}{s}" for s in JOURNAL_SUFFIXES[1:]]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            known = list_local_studies()
            listing = ", ".join(known) if known else "none"
            raise EdgeCompressError(
                f"study {text!r} not found: no {candidates[1]} or {candidates[0].name} "
                f"(studies in {root}: {listing})"
            )
        study_name, store, where = text, storage_for_path(found), str(found)
    if isinstance(store, str) and store.startswith("sqlite:///") and store != "sqlite:///:memory:":
        db = Path(store[len("sqlite:///") :])
        check_storage_file(db)
        if db.exists() and not _has_optuna_tables(db):
            # opening it with Optuna would create its tables: a write into a file that may be a search's
            # storage being created right now (both would insert the schema version, one would fail)
            raise EdgeCompressError(f"no studies in {where}")
    if isinstance(store, str):
        store = normalise_url(store)  # postgresql:// -> the psycopg 3 driver
    names = _list_studies(store, where)
    searches = [n for n in names if not (n.endswith(FINAL_SUFFIX) and n.removesuffix(FINAL_SUFFIX) in names)]
    if study_name is not None and storage is None and study_name not in names and len(searches) == 1:
        study_name = searches[0]  # runs/<name>.db holding one study under another name
    if study_name is None:
        if len(searches) == 1:
            study_name = searches[0]
        elif not names:
            raise EdgeCompressError(f"no studies in {where}")
        else:
            raise EdgeCompressError(
                f"{where} holds several studies ({', '.join(names)}): "
                "name one, e.g. load_study(NAME, storage=...)"
            )
    url = store if isinstance(store, str) else (where if storage is None or isinstance(storage, str) else None)
    try:
        study = optuna.load_study(study_name=study_name, storage=store)
        twin = study_name + FINAL_SUFFIX
        if final == "final" and twin not in names and not study_name.endswith(FINAL_SUFFIX):
            raise EdgeCompressError(f"study {study_name!r} has no finalized results in {where}: run "
                                    f"`edgecompress finalize {study_name}` (or load it with final='auto')")
        if final != "proxy" and twin in names:
            finalized = optuna.load_study(study_name=twin, storage=store)
            if final == "final" or any(t.state == TrialState.COMPLETE for t in finalized.get_trials(deepcopy=False)):
                study = finalized
        elif final == "proxy" and study_name.endswith(FINAL_SUFFIX):
            base = study_name.removesuffix(FINAL_SUFFIX)
            if base in names:
                study = optuna.load_study(study_name=base, storage=store)
        return StudyLocation(study, url, names)
    except KeyError:
        listing = ", ".join(names) if names else "none"
        raise EdgeCompressError(
            f"study {study_name!r} not found in {where} (studies there: {listing})"
        ) from None
    except Exception as e:  # noqa: BLE001 - an unreadable storage: one line, not a traceback
        raise StorageError(f"{where}: cannot read study {study_name!r} ({_first_line(e)})") from None
