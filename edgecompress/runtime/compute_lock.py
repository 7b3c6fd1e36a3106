"""One machine, many processes: training steps share the cores, a latency measurement has them alone.

`ComputeLock` is a readers-writer lock across processes with writer priority, built from `fcntl.flock` on
two files under `runs_dir()` (`.compute.gate`, `.compute.lock`):

    reader (one training step, one accuracy batch)   flock(gate, SH); flock(lock, SH); flock(gate, UN)
                                                     ... the step ...; flock(lock, UN)
    writer (one latency measurement)                 flock(gate, EX); flock(lock, EX) ... ; release both

A writer that waits holds the gate, so no new reader gets in: a measurement waits at most for the steps
in flight, and a stream of training steps cannot starve it. Readers are taken per step (microseconds of
system calls against steps of milliseconds), never per epoch.

flock locks belong to an open file description, so the files are opened once per process (reopened after a
fork) and one process never locks them twice: within a process, threads are coordinated by a condition
variable (in-process writer priority too), a nested shared section is a no-op, a nested exclusive one is
re-entrant, and asking for the exclusive lock inside one's own training step raises instead of deadlocking.
Locks die with their process (a killed trial worker releases its step).

Lock order, to stay deadlock-free: never wait for another file lock (e.g. a calibration file) while holding
the exclusive lock, and never wait for a child process that takes the lock while holding it shared.
No torch here: child processes that only lock start fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edgecompress.errors import EdgeCompressError
from edgecompress.utils import runs_dir

LOCK_NAME = ".compute.lock"
GATE_NAME = ".compute.gate"


def gate_path_for(lock_path: Path) -> Path:
    """The gate file that goes with a lock file: x.lock -> x.gate, anything else -> name + '.gate'."""
    name = lock_path.name
    return lock_path.with_name(name[: -len(".lock")] + ".gate" if name.endswith(".lock") else name + ".gate")


def _flock_until(fd: int, op: int, deadline: float, path: Path, timeout: float) -> None:
    """flock(fd, op), polling without blocking until `deadline` (monotonic) so a hung holder gives an error."""
    pause = 0.0005
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise EdgeCompressError(
                    f"compute lock {path} still held by another process after {timeout:.0f} s") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.005)


class ComputeLock:
    """Readers-writer lock with writer priority across processes (and the threads of each)."""

    def __init__(self, lock_path: str | os.PathLike[str]) -> None:
        self.lock_path = Path(lock_path)
        self.gate_path = gate_path_for(self.lock_path)
        self._fds: tuple[int, int] | None = None  # (gate, lock), opened on first use in each process
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._readers = 0  # threads of this process inside a shared section (the flock is held once)
        self._writer: int | None = None  # thread holding (or about to take) the exclusive lock
        self._writer_depth = 0
        self._local = threading.local()  # per-thread depth of shared sections

    # -- files ---------------------------------------------------------------------------------
    def _open(self) -> tuple[int, int]:
        if self._fds is None or self._pid != os.getpid():  # first use, or first use after a fork
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            gate = os.open(self.gate_path, flags, 0o666)
            lock = os.open(self.lock_path, flags, 0o666)
            self._fds, self._pid = (gate, lock), os.getpid()
        return self._fds

    def _reset_after_fork(self) -> None:
        """In a forked child: nothing is held by this process yet; the inherited descriptors are the parent's."""
        if self._fds is not None:
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds, self._pid = None, os.getpid()
        self._cond = threading.Condition()
        self._readers, self._writer, self._writer_depth = 0, None, 0
        self._local = threading.local()

    # -- state ---------------------------------------------------------------------------------
    def held_shared(self) -> bool:
        """True when the calling thread is inside a shared section."""
        return getattr(self._local, "depth", 0) > 0

    def held_exclusive(self) -> bool:
        """True when the calling thread holds the exclusive lock."""
        return self._writer == threading.get_ident() and self._writer_depth > 0

    # -- shared (training steps) ---------------------------------------------------------------
    def acquire_shared(self) -> None:
        """Enter a shared section (blocks while a measurement holds or waits for the lock)."""
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth or self.held_exclusive():  # nested, or this thread measures: already covered
            local.depth = depth + 1
            return
        with self._cond:
            while self._writer is not None:
                self._cond.wait()
            if self._readers == 0:
                gate, lock = self._open()
                fcntl.flock(gate, fcntl.LOCK_SH)  # waits while a writer holds the gate
                try:
                    fcntl.flock(lock, fcntl.LOCK_SH)
                finally:
                    fcntl.flock(gate, fcntl.LOCK_UN)
            self._readers += 1
        local.depth = 1

    def release_shared(self) -> None:
        """Leave the innermost shared section of the calling thread (no-op when it holds none)."""
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth <= 0:
            return
        local.depth = depth - 1
        if depth > 1 or self.held_exclusive():
            return
        with self._cond:
            self._readers -= 1
            if self._readers == 0 and self._fds is not None:
                fcntl.flock(self._fds[1], fcntl.LOCK_UN)
            self._cond.notify_all()

    def depth(self) -> int:
        """How many shared sections the calling thread is in."""
        return getattr(self._local, "depth", 0)

    def release_thread(self, to_depth: int = 0) -> None:
        """Leave the calling thread's shared sections down to `to_depth` (after an exception left one open)."""
        while self.depth() > to_depth:
            self.release_shared()

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    # -- exclusive (latency measurements) -------------------------------------------------------
    @contextlib.contextmanager
    def exclusive(self, timeout: float = 600.0) -> Iterator[Path]:
        """Hold the lock alone: every other process's training step and measurement waits."""
        me = threading.get_ident()
        if self.held_shared():
            raise EdgeCompressError(
                f"compute lock {self.lock_path}: a latency measurement was started inside this thread's own "
                "training step; it would wait for itself")
        if self._writer == me:  # re-entrant
            self._writer_depth += 1
            try:
                yield self.lock_path
            finally:
                self._writer_depth -= 1
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._writer is not None or self._readers > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EdgeCompressError(f"compute lock {self.lock_path} still held by another thread "
                                            f"after {timeout:.0f} s")
                self._cond.wait(left)
            self._writer = me
        try:
            gate, lock = self._open()
            _flock_until(gate, fcntl.LOCK_EX, deadline, self.lock_path, timeout)
            try:
                _flock_until(lock, fcntl.LOCK_EX, deadline, self.lock_path, timeout)
            except BaseException:
                fcntl.flock(gate, fcntl.LOCK_UN)
                raise
        except BaseException:
            with self._cond:
                self._writer = None
                self._cond.notify_all()
            raise
        self._writer_depth = 1
        try:
            yield self.lock_path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)
            with self._cond:
                self._writer, self._writer_depth = None, 0
                self._cond.notify_all()


class _NoLock:
    """Stands in for ComputeLock where training does not take part (device.exclusive_measurement: false)."""

    def acquire_shared(self) -> None:
        pass

    def release_shared(self) -> None:
        pass

    def depth(self) -> int:
        return 0

    def release_thread(self, to_depth: int = 0) -> None:
        pass

    def held_shared(self) -> bool:
        return False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        yield


NO_LOCK = _NoLock()
_LOCKS: dict[str, ComputeLock] = {}
_LOCKS_GUARD = threading.Lock()


def default_lock_path() -> Path:
    return runs_dir() / LOCK_NAME


def compute_lock(path: str | os.PathLike[str] | None = None) -> ComputeLock:
    """This process's ComputeLock on `path` (default runs_dir()/.compute.lock): one object, one pair of fds."""
    p = Path(path) if path is not None else default_lock_path()
    key = os.path.abspath(p)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = ComputeLock(p)
        return lock


def step_lock(enabled: bool = True, path: str | os.PathLike[str] | None = None) -> ComputeLock | _NoLock:
    """The lock a training step takes shared: the machine's ComputeLock, or a no-op when disabled."""
    return compute_lock(path) if enabled else NO_LOCK


def _after_fork_in_child() -> None:
    global _LOCKS_GUARD
    for lock in _LOCKS.values():  # the child opens its own descriptors: the parent's share the parent's locks
        lock._reset_after_fork()
    _LOCKS_GUARD = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
