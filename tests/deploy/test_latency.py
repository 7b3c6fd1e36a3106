"""Latency benchmarker: known-time fake models, CV/repeat bookkeeping, threads, the exclusive (compute) lock."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.runtime.latency import (
    LatencyStats,
    cpu_name,
    default_lock_path,
    latency_lock,
    measure_latency,
)


def _spin(ms: float) -> None:
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


@pytest.mark.parametrize("sleep_ms", [2.0, 5.0])
def test_median_matches_sleep_model(sleep_ms: float, tmp_path: Path) -> None:
    stats = measure_latency(
        lambda: time.sleep(sleep_ms / 1e3), batch_size=1, threads=1, warmup=2, warmup_seconds=0.0,
        min_repeats=10, max_seconds=1.0, target_cv=0.5, lock_path=tmp_path / "l.lock",
    )
    assert abs(stats.median_ms - sleep_ms) / sleep_ms < 0.2
    assert stats.p90_ms >= stats.median_ms
    assert stats.repeats >= 3 and stats.total_repeats >= stats.repeats
    assert 0 <= stats.cv < 1 and stats.inner_loops == 1
    assert stats.device == "cpu" and stats.device_name and stats.threads == 1
    assert stats.torch_version == torch.__version__


def test_settled_window_when_stable(tmp_path: Path) -> None:
    stats = measure_latency(lambda: time.sleep(0.003), batch_size=4, warmup=1, warmup_seconds=0.0,
                            min_repeats=8, max_seconds=3.0, target_cv=0.3, lock_path=tmp_path / "l")
    assert stats.settled and stats.repeats == 8 and stats.cv <= 0.3
    assert stats.batch_size == 4


def test_time_cap_when_cv_never_settles(tmp_path: Path) -> None:
    calls = [0]

    def erratic() -> None:  # alternates 1 ms and 6 ms: CV ~0.7, never below target
        calls[0] += 1
        time.sleep(0.001 if calls[0] % 2 else 0.006)

    stats = measure_latency(erratic, batch_size=1, warmup=1, warmup_seconds=0.0, min_repeats=5,
                            max_seconds=0.3, target_cv=0.02, lock_path=tmp_path / "l")
    assert not stats.settled
    assert stats.cv > 0.3
    assert stats.repeats == stats.total_repeats > 5  # stats over all repeats
    assert 0.3 <= stats.seconds < 0.3 + 0.2


def test_fast_function_is_timed_in_groups(tmp_path: Path) -> None:
    stats = measure_latency(lambda: _spin(0.1), batch_size=1, warmup=3, warmup_seconds=0.0,
                            min_repeats=10, max_seconds=1.0, target_cv=0.5, min_sample_ms=1.0,
                            lock_path=tmp_path / "l")
    assert stats.inner_loops >= 5  # 0.1 ms calls grouped into >= ~1 ms samples
    assert 0.1 <= stats.median_ms < 0.2  # reported per call, not per group


def test_threads_fixed_during_measurement_and_restored(tmp_path: Path) -> None:
    seen: list[int] = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        measure_latency(lambda: seen.append(torch.get_num_threads()), batch_size=1, threads=2, warmup=1,
                        warmup_seconds=0.0, min_repeats=3, max_seconds=0.1, lock_path=tmp_path / "l")
        assert set(seen) == {2}
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_to_metrics_uses_result_keys() -> None:
    s = LatencyStats(median_ms=1.5, p90_ms=2.0, mean_ms=1.6, cv=0.01, repeats=20, batch_size=64, device="cpu",
                     device_name="x", threads=2, backend="onnxruntime", runtime_version="onnxruntime 1")
    m = s.to_metrics("latency_batch")
    assert m["latency_batch_ms"] == 1.5 and m["latency_batch_p90_ms"] == 2.0 and m["latency_batch_cv"] == 0.01
    assert m["backend"] == "onnxruntime" and m["device_name"] == "x" and m["threads"] == 2
    assert "device" not in s.to_metrics(include_context=False)


def test_lock_is_exclusive_between_threads(tmp_path: Path) -> None:
    spans: list[tuple[float, float]] = []

    def hold() -> None:
        with latency_lock(tmp_path / "t.lock"):
            t0 = time.perf_counter()
            time.sleep(0.15)
            spans.append((t0, time.perf_counter()))

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 3
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))


def test_lock_is_exclusive_between_processes(tmp_path: Path) -> None:
    lock = tmp_path / "p.lock"
    ready = tmp_path / "ready"
    code = (
        "import sys, time, pathlib\n"
        "from edgecompress.runtime.latency import latency_lock\n"
        "with latency_lock(sys.argv[1]):\n"
        "    pathlib.Path(sys.argv[2]).touch()\n"
        "    time.sleep(3)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(lock), str(ready)])
    try:
        deadline = time.time() + 30
        while not ready.exists():
            assert child.poll() is None and time.time() < deadline, "child never took the lock"
            time.sleep(0.05)
        with pytest.raises(EdgeCompressError, match="still held"):
            with latency_lock(lock, timeout=0.3):
                pass
        # a measurement waits for the other process rather than timing alongside it
        t0 = time.perf_counter()
        measure_latency(lambda: None, batch_size=1, warmup=1, warmup_seconds=0.0, min_repeats=3,
                        max_seconds=0.05, lock_path=lock)
        assert time.perf_counter() - t0 > 1.0  # the child held it for 3 s after `ready`
    finally:
        child.wait(timeout=30)


def test_default_lock_lives_in_runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path / "runs"))
    with latency_lock() as p:
        assert p == default_lock_path() == tmp_path / "runs" / ".compute.lock"
        assert p.exists() and (tmp_path / "runs" / ".compute.gate").exists()


def test_bad_arguments_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        measure_latency(lambda: None, batch_size=0, lock_path=tmp_path / "l")
    with pytest.raises(ValueError, match="clock"):
        measure_latency(lambda: None, batch_size=1, clock="wall", lock_path=tmp_path / "l")
    if not torch.cuda.is_available():
        with pytest.raises(EdgeCompressError, match="CUDA"):
            measure_latency(lambda: None, batch_size=1, device="cuda", lock_path=tmp_path / "l")


def test_cpu_name_is_named() -> None:
    assert cpu_name().strip()


@pytest.mark.needs("cuda")
def test_cuda_events_path(tmp_path: Path) -> None:
    a = torch.randn(1024, 1024, device="cuda")
    stats = measure_latency(lambda: a @ a, batch_size=1, device="cuda", min_repeats=10, max_seconds=1.0,
                            lock_path=tmp_path / "l")
    assert stats.device == "cuda" and stats.device_name == torch.cuda.get_device_name()
    assert stats.median_ms > 0 and math.isfinite(stats.cv)
