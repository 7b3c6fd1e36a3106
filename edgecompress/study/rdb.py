"""RDB storages that outlive a database restart, and the heartbeat settings of a shared study.

`RetryingRDBStorage` is Optuna's RDBStorage whose calls retry with exponential backoff while the database
server cannot be reached (connection refused or dropped: a restart, a network blip), for up to
`EDGECOMPRESS_DB_RETRY_S` seconds (default 600), so workers of a PostgreSQL study pause through an outage
and go on; a finished trial already committed is never lost. Other errors are raised at once.
`postgresql://` URLs are normalised to SQLAlchemy's psycopg 3 driver (`postgresql+psycopg://`).
The heartbeat interval and grace period come from EDGECOMPRESS_HEARTBEAT_S / EDGECOMPRESS_GRACE_PERIOD_S
(the CLI's --grace-period sets the latter; tests use seconds, the default is 120 s).
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable
from typing import Any

from optuna.storages import RDBStorage

__all__ = ["GRACE_PERIOD_S", "HEARTBEAT_INTERVAL_S", "RetryingRDBStorage", "heartbeat_settings",
           "is_connection_error", "normalise_url"]

HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 120
RETRY_S = 600.0

# storage calls that talk to the database (the public BaseStorage API plus what _CachedStorage calls)
_DB_METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies", "create_new_trial", "_create_new_trial",
    "set_trial_param", "_set_trial_param", "get_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial", "get_all_trials",
    "_get_trials", "get_best_trial", "_get_best_trial_id", "get_n_trials", "record_heartbeat",
    "_get_stale_trial_ids",
)


def normalise_url(url: str) -> str:
    """`postgresql://` and `postgres://` -> `postgresql+psycopg://` (psycopg 3); other URLs unchanged."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds from the environment; the interval defaults to grace / 4."""
    grace = int(float(os.environ.get("EDGECOMPRESS_GRACE_PERIOD_S", GRACE_PERIOD_S)))
    interval = int(float(os.environ.get("EDGECOMPRESS_HEARTBEAT_S", min(HEARTBEAT_INTERVAL_S, max(1, grace // 4)))))
    return max(1, interval), max(1, grace)


def is_connection_error(e: BaseException) -> bool:
    """Whether `e` (or what it was raised from) means the database server could not be reached."""
    from sqlalchemy import exc

    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (exc.OperationalError, exc.InterfaceError)):
            return True
        if isinstance(cur, exc.DBAPIError) and cur.connection_invalidated:
            return True
        if type(cur).__module__.startswith("psycopg") and type(cur).__name__ in ("OperationalError",
                                                                                   "InterfaceError"):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _retrying(fn: Callable[..., Any], budget_s: Callable[[], float]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        delay, start = 0.25, time.monotonic()
        while True:
            try:
                return fn(self, *args, **kwargs)
            except Exception as e:
                if not is_connection_error(e) or time.monotonic() - start > budget_s():
                    raise
                self.outages += 1
                self.engine.dispose()  # drop the pool's dead connections
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)
    return call


class RetryingRDBStorage(RDBStorage):
    """RDBStorage that retries database calls with backoff while the server is unreachable (module doc)."""

    outages = 0  # failed attempts retried by this process (bench and tests read it)


def _budget() -> float:
    return float(os.environ.get("EDGECOMPRESS_DB_RETRY_S", RETRY_S))


for _name in _DB_METHODS:
    if hasattr(RDBStorage, _name):
        setattr(RetryingRDBStorage, _name, _retrying(getattr(RDBStorage, _name), _budget))
