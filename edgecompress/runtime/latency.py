"""Latency of one model alone: `measure_latency`, plus the device description and the exclusive lock.

`measure_latency`: a fixed thread count for the duration, a warm-up pass (the first configuration measured
in a process showed 22-36% CV without one), then timed repeats until the coefficient of variation of the
last `min_repeats` repeats is below `target_cv` or the time cap is reached. CUDA: the same with CUDA events
and synchronisation. The search times a model against a reference instead (latency_paired.py), with the
timer and statistics defined here.

Both hold the machine's compute lock exclusively (compute_lock.py): other measurements and the training
steps of every process that takes part wait, so parallel workers do not disturb each other.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.runtime.compute_lock import LOCK_NAME, compute_lock, default_lock_path
from edgecompress.runtime.timing import CallTimer

__all__ = ["LOCK_NAME", "LatencyStats", "cpu_name", "default_lock_path", "device_name", "latency_lock",
           "measure_latency"]


@dataclass
class LatencyStats:
    """Statistics of one latency measurement (per call of the timed function, milliseconds)."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    cv: float  # std / mean of the repeats the statistics are computed over
    repeats: int  # repeats the statistics are computed over
    batch_size: int
    device: str
    device_name: str
    threads: int
    backend: str = ""
    runtime_version: str = ""
    torch_version: str = torch.__version__
    total_repeats: int = 0  # all timed repeats, including those before the CV settled
    inner_loops: int = 1  # calls per timed repeat (fast functions are timed in groups)
    settled: bool = False  # True when the CV fell below target before the time cap
    seconds: float = 0.0  # wall time of the timed section

    def to_metrics(self, prefix: str = "latency", include_context: bool = True) -> dict[str, Any]:
        """Flat metric dict in EvalResult key style: `{prefix}_ms`, `{prefix}_p90_ms`, `{prefix}_cv`, ...

        Context keys (device, device_name, threads, backend, runtime_version, torch_version) are
        unprefixed, as in result.py; `batch_size` is left to the caller (it names the serving batch).
        """
        out: dict[str, Any] = {
            f"{prefix}_ms": self.median_ms,
            f"{prefix}_p90_ms": self.p90_ms,
            f"{prefix}_mean_ms": self.mean_ms,
            f"{prefix}_cv": self.cv,
            f"{prefix}_repeats": self.repeats,
        }
        if include_context:
            out.update(
                device=self.device,
                device_name=self.device_name,
                threads=self.threads,
                backend=self.backend,
                runtime_version=self.runtime_version,
                torch_version=self.torch_version,
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- device description ------------------------------------------------------------------------
def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform.processor(), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                name = line.split(":", 1)[1].strip()
                if name:
                    return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: str | torch.device = "cpu") -> str:
    """Human-readable name of the device latency is measured on (CPU model or GPU name)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return "cuda (unavailable)"
        return torch.cuda.get_device_name(dev)
    return cpu_name()


# ---- exclusive lock ----------------------------------------------------------------------------
@contextlib.contextmanager
def latency_lock(path: str | os.PathLike[str] | None = None, timeout: float = 600.0) -> Iterator[Path]:
    """Hold the machine's compute lock exclusively (compute_lock.py): no other process measures, and no
    training step of a process that takes part runs, until it is released. Re-entrant in one thread."""
    with compute_lock(path).exclusive(timeout) as lock_path:
        yield lock_path


# ---- statistics --------------------------------------------------------------------------------
def cv_of(xs: list[float]) -> float:
    if len(xs) < 2:
        return math.inf
    mean = statistics.fmean(xs)
    return statistics.stdev(xs) / mean if mean > 0 else math.inf


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def check_timing_args(caller: str, *, batch_size: int, threads: int, min_repeats: int, max_seconds: float,
                      target_cv: float, clock: str, device: str | torch.device) -> torch.device:
    """The checks every timing function makes of its arguments (ValueError naming the argument and value);
    returns the torch device, raising EdgeCompressError for CUDA on a machine without it."""
    for name, val in (("batch_size", batch_size), ("threads", threads), ("min_repeats", min_repeats)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"batch_size, threads and min_repeats must be positive ints, got {name}={val!r} "
                             f"({caller})")
    if max_seconds <= 0 or target_cv <= 0:
        raise ValueError(f"max_seconds and target_cv must be > 0, got {max_seconds}, {target_cv} ({caller})")
    if clock not in ("auto", "host"):
        raise ValueError(f"clock must be 'auto' or 'host', got {clock!r} ({caller})")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EdgeCompressError(f"latency on {dev} requested but CUDA is not available on this machine")
    return dev


def measure_latency(
    fn: Callable[[], Any],
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
    threads: int = 2,
    warmup: int = 5,
    warmup_seconds: float = 0.25,
    min_repeats: int = 20,
    max_seconds: float = 2.0,
    target_cv: float = 0.02,
    min_sample_ms: float = 1.0,
    lock_path: str | os.PathLike[str] | None = None,
    use_lock: bool = True,
    backend: str = "",
    runtime_version: str = "",
    clock: str = "auto",
) -> LatencyStats:
    """Time `fn` (a zero-argument callable that runs one batch) and return its latency statistics.

    Warm-up: at least `warmup` calls and `warmup_seconds`. Functions faster than `min_sample_ms` are
    timed in groups of calls (timeit style) so timer resolution and scheduler noise do not dominate;
    the reported numbers are per call. Repeats continue until the CV of the last `min_repeats`
    repeats is <= `target_cv` (statistics then come from that settled window) or `max_seconds` of
    timing have passed (statistics from all repeats, `settled=False`); at least 3 repeats always run.
    `clock="auto"` times CUDA work with CUDA events on the current torch stream; `clock="host"` uses
    the host clock (for runtimes such as ONNX Runtime whose call returns only when its work is done).
    """
    dev = check_timing_args("measure_latency", batch_size=batch_size, threads=threads, min_repeats=min_repeats,
                            max_seconds=max_seconds, target_cv=target_cv, clock=clock, device=device)
    cuda = dev.type == "cuda"

    lock_cm = latency_lock(lock_path) if use_lock else contextlib.nullcontext()
    with torch_threads(threads), lock_cm, torch.inference_mode():
        if cuda:
            torch.cuda.synchronize(dev)
        timer = CallTimer(fn, cuda and clock == "auto")
        # warm-up: caches, allocator, lazy init, JIT/compile, CPU frequency
        t_end = time.perf_counter() + warmup_seconds
        n = 0
        while n < warmup or time.perf_counter() < t_end:
            fn()
            n += 1
        if cuda:
            torch.cuda.synchronize(dev)
        one = max(timer.sample_ms(1), 1e-6)
        inner = max(1, math.ceil(min_sample_ms / one)) if one < min_sample_ms else 1
        samples: list[float] = []
        settled = False
        t0 = time.perf_counter()
        while True:
            samples.append(timer.sample_ms(inner) / inner)
            elapsed = time.perf_counter() - t0
            if len(samples) >= min_repeats and cv_of(samples[-min_repeats:]) <= target_cv:
                settled = True
                break
            if elapsed >= max_seconds and len(samples) >= 3:
                break
        seconds = time.perf_counter() - t0

    window = samples[-min_repeats:] if settled else samples
    return LatencyStats(
        median_ms=statistics.median(window),
        p90_ms=percentile(window, 0.9),
        mean_ms=statistics.fmean(window),
        cv=cv_of(window),
        repeats=len(window),
        batch_size=batch_size,
        device=dev.type,
        device_name=device_name(dev),
        threads=threads,
        backend=backend,
        runtime_version=runtime_version,
        torch_version=torch.__version__,
        total_repeats=len(samples),
        inner_loops=inner,
        settled=settled,
        seconds=seconds,
    )
