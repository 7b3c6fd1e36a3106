"""The machine's compute lock: a readers-writer lock with writer priority across processes (flock).

Training steps are readers, latency measurements writers. Cross-process orderings are checked with
timestamps the processes write (time.time() is one clock for all of them).
"""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.runtime.compute_lock import ComputeLock, compute_lock, default_lock_path, gate_path_for, step_lock

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time, pathlib
from edgecompress.runtime.compute_lock import ComputeLock
lock, mode, hold, out = ComputeLock(sys.argv[1]), sys.argv[2], float(sys.argv[3]), pathlib.Path(sys.argv[4])
if mode == "shared":
    lock.acquire_shared()
    t0 = time.time()
    out.with_suffix(".ready").touch()
    time.sleep(hold)
    out.write_text(f"{t0} {time.time()}")  # written before the release: t1 <= the real release
    lock.release_shared()
else:
    out.with_suffix(".waiting").touch()
    with lock.exclusive():
        t0 = time.time()
        out.with_suffix(".ready").touch()
        time.sleep(hold)
        out.write_text(f"{t0} {time.time()}")
"""


def _holder(lock: Path, mode: str, hold: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), mode, str(hold), str(out)], cwd=ROOT)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def _times(out: Path) -> tuple[float, float]:
    t0, t1 = out.read_text().split()
    return float(t0), float(t1)


def test_files_and_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path / "runs"))
    assert default_lock_path() == tmp_path / "runs" / ".compute.lock"
    assert gate_path_for(default_lock_path()) == tmp_path / "runs" / ".compute.gate"
    assert gate_path_for(Path("x/l")) == Path("x/l.gate")
    lock = compute_lock()
    assert lock is compute_lock(default_lock_path()) and lock is step_lock(True)  # one per process and path
    with lock.shared():
        assert (tmp_path / "runs" / ".compute.gate").exists() and lock.held_shared()
    assert step_lock(False).held_shared() is False


def test_a_reader_blocks_a_writer_until_its_step_ends(tmp_path: Path) -> None:
    lock_path, out = tmp_path / "c.lock", tmp_path / "reader.txt"
    child = _holder(lock_path, "shared", 1.0, out)
    try:
        _wait_for(out.with_suffix(".ready"), child)
        lock = ComputeLock(lock_path)
        with pytest.raises(EdgeCompressError, match="still held"):
            with lock.exclusive(timeout=0.2):
                pass
        with lock.exclusive(timeout=30):
            acquired = time.time()
        assert not lock.held_exclusive()
    finally:
        child.wait(timeout=30)
    _, released = _times(out)
    assert acquired >= released


def test_a_waiting_writer_blocks_new_readers(tmp_path: Path) -> None:
    """R1 holds a step; W waits for the lock; R2 asks for a step: shared with R1 it would be granted at once,
    but W waits first (writer priority), so R2 runs after W: R1 -> W -> R2."""
    lock_path, r1_out, w_out = tmp_path / "c.lock", tmp_path / "r1.txt", tmp_path / "w.txt"
    r1 = _holder(lock_path, "shared", 1.5, r1_out)
    w = None
    try:
        _wait_for(r1_out.with_suffix(".ready"), r1)
        w = _holder(lock_path, "exclusive", 0.5, w_out)
        _wait_for(w_out.with_suffix(".waiting"), w)
        time.sleep(0.3)  # W is now in flock: it holds the gate and waits for R1
        assert not w_out.with_suffix(".ready").exists(), "the writer did not wait for the reader"
        lock = ComputeLock(lock_path)
        asked = time.time()
        with lock.shared():
            granted = time.time()
    finally:
        r1.wait(timeout=30)
        if w is not None:
            w.wait(timeout=30)
    r1_t0, r1_t1 = _times(r1_out)
    w_t0, w_t1 = _times(w_out)
    assert w_t0 >= r1_t1  # the writer waited for the step in flight
    assert granted >= w_t1  # the new reader waited for the writer, not only for R1
    assert granted - asked >= 0.5


def test_threads_of_one_process(tmp_path: Path) -> None:
    lock = ComputeLock(tmp_path / "c.lock")
    with lock.shared():
        with lock.shared():  # nested: no-op
            assert lock.held_shared()
        with pytest.raises(EdgeCompressError, match="inside this thread's own training step"):
            with lock.exclusive(timeout=1):
                pass
    assert not lock.held_shared()
    with lock.exclusive():
        with lock.exclusive():  # re-entrant
            with lock.shared():  # a measurement's own thread: already covered
                assert lock.held_exclusive()
        assert lock.held_exclusive()
    assert not lock.held_exclusive()
    # another thread's step blocks this thread's measurement until it ends
    spans: dict[str, float] = {}
    started = threading.Event()

    def step() -> None:
        with lock.shared():
            started.set()
            time.sleep(0.3)
            spans["step_end"] = time.perf_counter()

    t = threading.Thread(target=step)
    t.start()
    started.wait()
    with lock.exclusive(timeout=10):
        spans["measured"] = time.perf_counter()
    t.join()
    assert spans["measured"] >= spans["step_end"]


def test_release_thread_after_a_step_raised(tmp_path: Path) -> None:
    lock = ComputeLock(tmp_path / "c.lock")
    lock.acquire_shared()
    lock.acquire_shared()
    lock.release_thread()
    assert not lock.held_shared()
    with lock.exclusive(timeout=1):
        pass


def _fork_child(lock_path: str, q: mp.Queue, released: threading.Event) -> None:
    lock = compute_lock(lock_path)  # the parent's object, inherited while it held a step
    for wait in (0.3, None):
        if wait is None:
            released.wait(30)
        try:
            with lock.exclusive(timeout=wait or 10):
                q.put("acquired")
        except EdgeCompressError:
            q.put("waited")


def test_a_forked_child_does_not_share_the_parents_lock(tmp_path: Path) -> None:
    """Forked while the parent holds a step: the child waits for it (its own descriptors), then measures
    once the parent's step ends (it did not inherit the parent's hold either)."""
    lock_path = str(tmp_path / "c.lock")
    lock = compute_lock(lock_path)
    ctx = mp.get_context("fork")
    q, released = ctx.Queue(), ctx.Event()
    with lock.shared():
        p = ctx.Process(target=_fork_child, args=(lock_path, q, released))
        p.start()
        first = q.get(timeout=30)
    released.set()
    second = q.get(timeout=30)
    p.join(timeout=30)
    assert (first, second) == ("waited", "acquired")


# ---- train_model takes part ----------------------------------------------------------------------------
def _tiny_training(compute: bool) -> list[float]:
    from edgecompress.evaluators.models import create_model
    from edgecompress.evaluators.splits import TensorSplit
    from edgecompress.evaluators.train import TrainSettings, train_model

    g = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (64,), generator=g), (0.5,), (0.25,))
    model = create_model("resnet8", num_classes=10, in_chans=1, widths=(4, 8, 8))
    steps: list[float] = []
    settings = TrainSettings(epochs=1, batch_size=32, augment=False, memory_format="contiguous",
                             compute_lock=compute)
    train_model(model, split, 16, settings, on_step=lambda i, n: steps.append(time.time()))
    return steps


@pytest.mark.parametrize("compute", [True, False], ids=["takes-part", "switched-off"])
def test_training_steps_wait_for_a_measurement(compute: bool, tmp_path: Path) -> None:
    """A measurement (exclusive, in another process) holds the machine: train_model's steps wait for it;
    with device.exclusive_measurement off (compute_lock=False) they run beside it."""
    out = tmp_path / "w.txt"
    child = _holder(default_lock_path(), "exclusive", 1.0, out)
    try:
        _wait_for(out.with_suffix(".ready"), child)
        steps = _tiny_training(compute)
    finally:
        child.wait(timeout=30)
    _, released = _times(out)
    assert len(steps) == 2
    if compute:
        assert steps[0] >= released
    else:
        assert steps[0] < released
    assert not compute_lock().held_shared()  # released after the last step


def test_a_step_that_raises_does_not_keep_the_lock() -> None:
    from edgecompress.errors import TrainingDivergedError
    from edgecompress.evaluators.models import create_model
    from edgecompress.evaluators.splits import TensorSplit
    from edgecompress.evaluators.train import TrainSettings, train_model

    split = TensorSplit(torch.randint(0, 256, (32, 1, 16, 16), dtype=torch.uint8), torch.randint(0, 10, (32,)),
                        (0.5,), (0.25,))
    model = create_model("resnet8", num_classes=10, in_chans=1, widths=(4, 8, 8))
    settings = TrainSettings(epochs=3, batch_size=16, lr=1e30, augment=False, memory_format="contiguous")
    with pytest.raises(TrainingDivergedError):
        train_model(model, split, 16, settings)
    assert not compute_lock().held_shared()
    with compute_lock().exclusive(timeout=1):  # this process measures next: no self-deadlock
        pass
