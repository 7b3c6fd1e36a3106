"""The reference's study-wide median (`calibrated_reference`): measured in several windows once per
machine/runtime, cached in a JSON file and shared by every process, so paired ratios (latency_paired.py)
turn into drift-corrected latencies that agree across processes and studies.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from edgecompress.errors import EdgeCompressError
from edgecompress.runtime.compute_lock import compute_lock
from edgecompress.utils import atomic_write_json, stable_hash

__all__ = ["calibrated_reference", "is_stale"]

REFERENCE_WINDOWS = 5
STALE_FASTER = 0.25  # the reference beat its calibrated median by more than this on every try: recalibrate


def calibrated_reference(
    path: str | os.PathLike[str],
    key: dict[str, Any],
    window: Callable[[int], dict[str, float]],
    windows: int = REFERENCE_WINDOWS,
    gap_seconds: float = 0.2,
    timeout: float = 600.0,
    stale: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The reference's calibrated medians for `key`, measured once per machine/runtime and shared.

    `path` is a JSON file (next to the cached base model) holding one entry per key (device name, CPU
    flags, backend, threads, batch size, runtime versions): the first process to need an entry measures
    `windows` short windows (`window(i)` returns medians by name, e.g. latency_ms / latency_batch_ms), `gap_seconds`
    apart, and stores the median of each name over the windows; every other process, worker and study on
    the machine reads that value. Created under a file lock; call it while NOT holding the compute lock
    (the windows take it, and another process may hold the file lock while waiting for it).

    `stale`: an entry the caller found wrong (see `is_stale`): if the file still holds it, it is measured
    again and replaced; if another process already replaced it, that newer entry is returned.
    """
    if compute_lock().held_exclusive():
        raise EdgeCompressError("calibrated_reference: called while holding the compute lock exclusively "
                                "(it would wait for processes that wait for this one)")
    path = Path(path)
    name = stable_hash(key, 16)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(f".{path.name}.lock")), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise EdgeCompressError(f"{path}: calibration lock still held after {timeout:.0f} s") from None
    try:
        table = _read_json(path)
        entry = table.get(name)
        if isinstance(entry, dict) and isinstance(entry.get("medians"), dict):
            if stale is None or _entry_id(entry) != _entry_id(stale):
                return entry
        rows = []
        for i in range(windows):
            if i:
                time.sleep(gap_seconds)
            rows.append(window(i))
        names = sorted({k for row in rows for k in row})
        entry = {
            "medians": {k: statistics.median(row[k] for row in rows if k in row) for k in names},
            "windows": rows,
            "key": key,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "pid": os.getpid(),
            **({"replaces": {"created": stale.get("created"), "medians": stale.get("medians")}} if stale else {}),
        }
        table[name] = entry
        atomic_write_json(path, table)
        return entry
    finally:
        lock.release()


def is_stale(calibrated_ms: float, window_ref_ms: float, faster: float = STALE_FASTER) -> bool:
    """A calibrated median the reference now beats by more than `faster` (a fraction) was taken while something
    slowed it (long serving-batch calls are preempted by other processes much more than batch-1 calls): a quiet
    machine does not run its reference that much faster than it did quietly, whereas a disturbance now only
    slows it, which the paired windows' retry rule handles."""
    return calibrated_ms > 0 and window_ref_ms < calibrated_ms * (1 - faster)


def _entry_id(entry: dict[str, Any]) -> tuple[Any, Any, Any]:
    return entry.get("created"), entry.get("pid"), str(entry.get("medians"))


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
