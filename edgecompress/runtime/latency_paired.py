"""Latency against a reference (issue 13): the interleaved protocol the search uses, `measure_paired`.

One model's median moved 36% between fresh processes (machine drift, warm-up) while repeats within one
window agreed to 1%. So the trial's model and a fixed reference (the experiment's uncompressed model, deployed
the same way) are warmed up until stable and then timed in alternating blocks in the same window; the median
of the per-pair ratios is what carries from window to window, and ratio x the reference's calibrated median
(latency_reference.py) is the drift-corrected latency. Each measurement records the machine's load during
its window. Timer, statistics and the compute lock come from latency.py.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from edgecompress.runtime.latency import (
    check_timing_args,
    cv_of,
    device_name,
    latency_lock,
    percentile,
    torch_threads,
)
from edgecompress.runtime.timing import CallTimer

__all__ = ["PairedStats", "measure_paired", "median_interval"]


# ---- interleaved protocol ----------------------------------------------------------------------
PROTOCOL = "interleaved-reference-v1"
PROTOCOL_NOTE = ("drift-corrected: ratio to the uncompressed reference measured interleaved x its calibrated "
                 "median; a window whose reference strays from that median is measured again")


def median_interval(xs: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): a distribution-free interval for the median from order statistics.

    The ranks are n/2 -+ z sqrt(n)/2 (normal approximation of the binomial); below 6 values the interval is
    the whole range.
    """
    if not xs:
        raise ValueError("xs must not be empty (median_interval)")
    s = sorted(xs)
    n = len(s)
    med = statistics.median(s)
    if n < 6:
        return med, s[0], s[-1]
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    lo = max(0, math.floor((n - z * math.sqrt(n)) / 2) - 1)
    hi = min(n - 1, math.ceil((n + z * math.sqrt(n)) / 2) - 1)
    return med, s[lo], s[hi]


def _busy_cpu_seconds() -> float | None:
    """Non-idle CPU seconds of the whole machine since boot (/proc/stat), None where unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    busy = sum(v[:3]) + sum(v[5:8])  # user nice system (idle iowait) irq softirq steal; guest is in user
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system  # every thread of this process (ONNX Runtime's pool too)


class LoadProbe:
    """The machine's load over a window: 1-min loadavg and the CPUs kept busy by *other* processes."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_cpu_seconds(), _own_cpu_seconds()

    def read(self) -> tuple[float | None, float | None]:
        """(loadavg over 1 min, busy CPUs of other processes averaged over the window)."""
        try:
            load: float | None = os.getloadavg()[0]
        except OSError:
            load = None
        busy1, elapsed = _busy_cpu_seconds(), time.perf_counter() - self.t0
        if busy1 is None or self.busy0 is None or elapsed <= 0:
            return load, None
        others = (busy1 - self.busy0) - (_own_cpu_seconds() - self.own0)
        return load, max(0.0, others / elapsed)


@dataclass
class PairedStats:
    """A trial's model timed interleaved with a reference in one window (per call, milliseconds)."""

    median_ms: float  # the trial's absolute median
    ci_low_ms: float  # 95% order-statistic interval of that median
    ci_high_ms: float
    p90_ms: float
    mean_ms: float
    cv: float
    ref_median_ms: float  # the reference's median in the same window
    ratio: float  # median of the per-pair ratios trial / reference
    ratio_ci_low: float
    ratio_ci_high: float
    repeats: int  # pairs of blocks (trial, reference) timed
    batch_size: int
    device: str
    device_name: str
    threads: int
    backend: str = ""
    runtime_version: str = ""
    torch_version: str = torch.__version__
    inner_loops: int = 1
    ref_inner_loops: int = 1
    settled: bool = False  # the ratio's relative interval fell below the target before the time cap
    seconds: float = 0.0  # the timed window
    warmup_seconds: float = 0.0
    warmed_up: bool = False  # both medians were stable before the time cap of the warm-up
    load_1min: float | None = None
    busy_cpus: float | None = None  # CPUs kept busy by other processes during the window
    exclusive: bool = True  # the compute lock was held

    @property
    def ratio_rel_halfwidth(self) -> float:
        return (self.ratio_ci_high - self.ratio_ci_low) / (2 * self.ratio) if self.ratio > 0 else math.inf

    def corrected_ms(self, ref_study_ms: float | None = None) -> float:
        """ratio x the reference's study-wide median (the window's own reference median without one)."""
        return self.ratio * (ref_study_ms if ref_study_ms else self.ref_median_ms)

    def to_metrics(self, prefix: str = "latency", ref_study_ms: float | None = None,
                   include_context: bool = True) -> dict[str, Any]:
        """Flat metrics: `{prefix}_ms` is the drift-corrected latency (ratio x `ref_study_ms`); p90 and mean
        are scaled by the same correction; `_abs_`, `_ratio`, `_ref_` keys keep the raw figures."""
        ref = ref_study_ms if ref_study_ms else self.ref_median_ms
        value = self.ratio * ref
        c = value / self.median_ms if self.median_ms > 0 else 1.0
        p = prefix
        out: dict[str, Any] = {
            f"{p}_ms": value, f"{p}_p90_ms": self.p90_ms * c, f"{p}_mean_ms": self.mean_ms * c,
            f"{p}_cv": self.cv, f"{p}_repeats": self.repeats,
            f"{p}_ci_low_ms": self.ratio_ci_low * ref, f"{p}_ci_high_ms": self.ratio_ci_high * ref,
            f"{p}_abs_ms": self.median_ms, f"{p}_abs_ci_low_ms": self.ci_low_ms,
            f"{p}_abs_ci_high_ms": self.ci_high_ms,
            f"{p}_ratio": self.ratio, f"{p}_ratio_ci_low": self.ratio_ci_low, f"{p}_ratio_ci_high": self.ratio_ci_high,
            f"{p}_ref_ms": self.ref_median_ms, f"{p}_ref_study_ms": ref,
            f"{p}_load": self.load_1min, f"{p}_busy_cpus": self.busy_cpus,
            f"{p}_seconds": round(self.seconds, 4), f"{p}_settled": self.settled,
        }
        if include_context:
            out.update(device=self.device, device_name=self.device_name, threads=self.threads, backend=self.backend,
                       runtime_version=self.runtime_version, torch_version=self.torch_version)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _settle(fn: Callable[[], Any], ms: float) -> None:
    """Untimed calls of `fn` for `ms` after switching to it, so what the other model left behind is gone."""
    if ms <= 0:
        return
    end = time.perf_counter() + ms / 1e3
    fn()
    while time.perf_counter() < end:
        fn()


def _stable(xs: list[float], tol: float = 0.05) -> bool:
    """The median of the last 5 samples is within `tol` of the 5 before."""
    if len(xs) < 10:
        return False
    a, b = statistics.median(xs[-10:-5]), statistics.median(xs[-5:])
    return a > 0 and abs(b / a - 1) <= tol


def measure_paired(
    fn: Callable[[], Any],
    ref_fn: Callable[[], Any],
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
    threads: int = 2,
    warmup: int = 5,
    warmup_seconds: float = 0.25,
    warmup_max_seconds: float = 1.0,
    min_repeats: int = 20,
    max_seconds: float = 2.0,
    target_cv: float = 0.02,
    min_seconds: float = 0.0,
    min_sample_ms: float = 1.0,
    switch_ms: float = 0.0,
    lock_path: str | os.PathLike[str] | None = None,
    use_lock: bool = True,
    backend: str = "",
    runtime_version: str = "",
    clock: str = "auto",
) -> PairedStats:
    """Time `fn` (the trial's model) interleaved with `ref_fn` (the reference) in one window.

    Warm-up: both alternately, at least `warmup` calls and `warmup_seconds`, until the median of each is
    stable (5% between the last two groups of 5) or `warmup_max_seconds`. Then pairs of timed blocks, one
    of each, in random order and with block lengths jittered around `min_sample_ms` (so neither a drift
    nor a periodic disturbance lines up with one of them); `switch_ms` > 0 adds untimed calls of the next
    model after each block, for runtimes that leave work behind (ONNX Runtime's pool spun ~20 ms after a
    run here until deploy set session.force_spinning_stop). After `min_repeats` pairs it stops once the
    95% order-statistic interval of the median per-pair ratio is within +-`target_cv` of it (relative
    half-width) and `min_seconds` have passed, else at `max_seconds` (at least 3 pairs). Holds the compute
    lock exclusively unless `use_lock` is False. `clock` as in measure_latency.
    """
    dev = check_timing_args("measure_paired", batch_size=batch_size, threads=threads, min_repeats=min_repeats,
                            max_seconds=max_seconds, target_cv=target_cv, clock=clock, device=device)
    if not 0 <= min_seconds <= max_seconds:
        raise ValueError(f"min_seconds must be in [0, max_seconds={max_seconds}], got {min_seconds} (measure_paired)")
    cuda = dev.type == "cuda"

    lock_cm = latency_lock(lock_path) if use_lock else contextlib.nullcontext()
    with torch_threads(threads), lock_cm, torch.inference_mode():
        if cuda:
            torch.cuda.synchronize(dev)
        ta, tb = CallTimer(fn, cuda and clock == "auto"), CallTimer(ref_fn, cuda and clock == "auto")
        # warm-up of both, until each one's median is stable
        wa: list[float] = []
        wb: list[float] = []
        t0 = time.perf_counter()
        warmed = False
        while True:
            wa.append(ta.sample_ms(1))
            wb.append(tb.sample_ms(1))
            el = time.perf_counter() - t0
            if len(wa) >= warmup and el >= warmup_seconds and _stable(wa) and _stable(wb):
                warmed = True
                break
            if el >= max(warmup_max_seconds, warmup_seconds) and len(wa) >= 2:
                break
        if cuda:
            torch.cuda.synchronize(dev)
        warm_s = time.perf_counter() - t0
        one_a = max(statistics.median(wa[-5:]), 1e-6)
        one_b = max(statistics.median(wb[-5:]), 1e-6)
        inner_a = max(1, math.ceil(min_sample_ms / one_a)) if one_a < min_sample_ms else 1
        inner_b = max(1, math.ceil(min_sample_ms / one_b)) if one_b < min_sample_ms else 1
        sa: list[float] = []  # per-call ms of each pair's block of the trial and of the reference
        sb: list[float] = []
        ratios: list[float] = []
        rng = random.Random(0x5EED)
        settled = False
        probe = LoadProbe()
        t0 = time.perf_counter()
        next_check = min_repeats
        while True:
            # Random order within each pair and jittered block lengths: interference that comes back
            # periodically (another process's time slice stalling one of a pool's threads, here every ~4th
            # block of a fixed ABBA sequence, always at the same place) then hits the trial's and the
            # reference's blocks alike, and the median of the per-pair ratios discards it.
            na = max(1, round(inner_a * rng.uniform(0.75, 1.25)))
            nb = max(1, round(inner_b * rng.uniform(0.75, 1.25)))
            if rng.random() < 0.5:
                a = ta.sample_ms(na) / na
                _settle(ref_fn, switch_ms)
                b = tb.sample_ms(nb) / nb
                _settle(fn, switch_ms)
            else:
                b = tb.sample_ms(nb) / nb
                _settle(fn, switch_ms)
                a = ta.sample_ms(na) / na
                _settle(ref_fn, switch_ms)
            sa.append(a)
            sb.append(b)
            ratios.append(a / b if b > 0 else math.inf)
            n = len(ratios)
            if n >= next_check and time.perf_counter() - t0 >= min_seconds:
                r, lo, hi = median_interval(ratios)
                if r > 0 and (hi - lo) / (2 * r) <= target_cv:
                    settled = True
                    break
                next_check = n + max(1, n // 20)  # sorting every pair would cost more than the blocks
            if n >= 3 and time.perf_counter() - t0 >= max_seconds:
                break
        seconds = time.perf_counter() - t0
        load, busy = probe.read()

    med, lo_a, hi_a = median_interval(sa)
    r, lo_r, hi_r = median_interval(ratios)
    return PairedStats(
        median_ms=med, ci_low_ms=lo_a, ci_high_ms=hi_a, p90_ms=percentile(sa, 0.9), mean_ms=statistics.fmean(sa),
        cv=cv_of(sa), ref_median_ms=statistics.median(sb), ratio=r, ratio_ci_low=lo_r, ratio_ci_high=hi_r,
        repeats=len(sa), batch_size=batch_size, device=dev.type, device_name=device_name(dev), threads=threads,
        backend=backend, runtime_version=runtime_version, torch_version=torch.__version__, inner_loops=inner_a,
        ref_inner_loops=inner_b, settled=settled, seconds=seconds, warmup_seconds=warm_s, warmed_up=warmed,
        load_1min=load, busy_cpus=busy, exclusive=use_lock,
    )
