"""The timing engine's clock: every timed call in the library goes through here (measure_latency and the
reference-paired protocol build on `CallTimer`; the cascade's path costs and per-call statistics, the fused
graph's overheads, the routing overhead and the memory-format probe call `time_each` / `time_blocks` /
`time_call`), so each is timed one way and, unless told otherwise, under the machine's exclusive compute lock
(compute_lock.py: no training step or other measurement runs meanwhile). tests/test_source_rules_timing.py
keeps timing loops out of other modules.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgecompress.runtime.compute_lock import compute_lock


@dataclass(frozen=True)
class TimingOptions:
    """How a timing run goes: `warmup` untimed calls first; then `rounds` rounds of `calls` calls per callable
    (time_blocks interleaves the callables round by round, so each sees the same machine load); `exclusive`
    holds the machine's compute lock for the run (False only for a probe inside a training process)."""

    warmup: int = 30
    rounds: int = 1
    calls: int = 1
    exclusive: bool = True
    lock_path: str | None = None

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.calls < 1:
            raise ValueError(f"calls must be >= 1, got {self.calls}")


@contextlib.contextmanager
def _held(options: TimingOptions) -> Iterator[None]:
    if options.exclusive:
        with compute_lock(options.lock_path).exclusive():
            yield
    else:
        yield


class CallTimer:
    """Times `inner` calls of `fn` per sample, on the host clock (CPU) or with CUDA events."""

    def __init__(self, fn: Callable[[], Any], cuda: bool) -> None:
        self.fn, self.cuda = fn, cuda
        if cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def sample_ms(self, inner: int) -> float:
        fn = self.fn
        if self.cuda:
            self.start.record()
            for _ in range(inner):
                fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) * 1e3


class Stopwatch:
    """Seconds since it was made, on the engine's clock: for a span the caller cannot wrap in one callable (the
    first training steps, timed inside the training loop to choose the memory format)."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self._t0


def time_each(fn: Callable[[Any], Any], inputs: Sequence[Any],
              options: TimingOptions = TimingOptions()) -> tuple[np.ndarray, list[Any]]:  # noqa: B008 - frozen
    """Milliseconds of each call `fn(x)` over `inputs` in order, and each call's result, after `options.warmup`
    untimed calls on the first inputs (for per-input costs, e.g. which exit of a cascade each input took)."""
    with _held(options):
        for x in inputs[: options.warmup]:
            fn(x)
        times, results = [], []
        for x in inputs:
            t0 = time.perf_counter()
            out = fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
            results.append(out)
    return np.asarray(times, dtype=float), results


def time_blocks(fns: Sequence[Callable[[], Any]],
                options: TimingOptions = TimingOptions(warmup=10, rounds=7, calls=200)) -> list[float]:  # noqa: B008
    """Per callable, the fastest round's mean milliseconds per call: each round times `calls` calls of every
    callable in turn (interleaved), after `warmup` calls of each; the minimum over rounds is the least
    disturbed estimate of a fixed cost."""
    timers = [CallTimer(fn, cuda=False) for fn in fns]
    with _held(options):
        for fn in fns:
            for _ in range(options.warmup):
                fn()
        per: list[list[float]] = [[] for _ in fns]
        for _ in range(options.rounds):
            for i, timer in enumerate(timers):
                per[i].append(timer.sample_ms(options.calls) / options.calls)
    return [float(min(p)) for p in per]


def time_call(fn: Callable[[], Any], sync: Callable[[], Any] | None = None,
              options: TimingOptions = TimingOptions(warmup=0, exclusive=False)) -> tuple[float, Any]:  # noqa: B008
    """Seconds of one call `fn()` (then `sync()`, e.g. torch.cuda.synchronize, inside the timed span), and its
    result: one step of a probe, not a latency figure (no repeats)."""
    with _held(options):
        t0 = time.perf_counter()
        out = fn()
        if sync is not None:
            sync()
        return time.perf_counter() - t0, out


__all__ = ["CallTimer", "Stopwatch", "TimingOptions", "time_blocks", "time_call", "time_each"]
