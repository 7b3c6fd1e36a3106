"""Latency against the deployed uncompressed reference, drift-corrected: CompressionEvaluator's timing half."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from edgecompress.evaluators.base_model import base_dir
from edgecompress.runtime.deployed import Deployed
from edgecompress.runtime.latency import latency_lock
from edgecompress.runtime.latency_paired import PROTOCOL_NOTE, PairedStats
from edgecompress.runtime.latency_reference import calibrated_reference, is_stale
from edgecompress.spaces.experiment import ExperimentConfig

REFERENCE_FILE = "latency_reference.json"  # in base_dir(exp): the reference's calibrated medians per machine


@dataclass
class LatencyReference:
    """The uncompressed model deployed as the trials are (fp32, native size) and its calibrated medians."""

    dep: Deployed
    x1: torch.Tensor
    xb: torch.Tensor
    study_ms: float  # calibrated median at batch 1 (shared by every process on this machine)
    study_batch_ms: float  # ... at the serving batch
    calibration: dict[str, Any]


class PairedLatencyMixin:
    """The latency half of CompressionEvaluator (evaluate.py), which provides `exp`, `data`, `base`, `device`
    and `_deploy`; kept apart so evaluate.py holds the compress -> fine-tune -> accuracy pipeline."""

    exp: ExperimentConfig
    device: str
    _reference: LatencyReference | None

    _reference_model: Callable[[], nn.Module] | None = None

    def reference_model(self) -> nn.Module:
        """The latency reference's architecture: the uncompressed base model (weights do not matter), or what
        the evaluator's `reference` builds."""
        if self._reference_model is not None:
            return self._reference_model()
        return self.base.model

    def latency_reference(self, stale: dict[str, Any] | None = None) -> LatencyReference:
        """The reference deployed in this process, with its calibrated medians (measured once per machine,
        runtime and settings, under a file lock, and cached in base_dir(exp)/latency_reference.json);
        `stale`: a calibration entry found wrong, measured again (latency_reference.is_stale)."""
        if self._reference is None or stale is not None:
            d, c, native = self.exp.device, self.data.in_chans, self.data.native_size
            if self._reference is not None:  # recalibrating: the deployed reference and inputs stay
                dep, x1, xb = self._reference.dep, self._reference.x1, self._reference.xb
            else:
                dep = self._deploy(self.reference_model(), native, "fp32")
                x1 = torch.randn(1, c, native, native, device=self.device)
                xb = torch.randn(d.batch_size, c, native, native, device=self.device)

            def window(i: int) -> dict[str, float]:  # a short window of the reference alone
                kw = dict(min_repeats=d.min_repeats, max_seconds=d.max_seconds / 2, target_cv=d.target_cv,
                          warmup_seconds=0.25 if i == 0 else 0.05)
                return {"latency_ms": dep.measure(x1, **kw).median_ms,
                        "latency_batch_ms": dep.measure(xb, **kw).median_ms}

            entry = calibrated_reference(base_dir(self.exp) / REFERENCE_FILE,
                                         dep.calibration_key((c, native, native), d.batch_size), window, stale=stale)
            med = entry["medians"]
            self._reference = LatencyReference(dep, x1, xb, float(med["latency_ms"]),
                                               float(med["latency_batch_ms"]), entry)
        return self._reference

    def measure_latency(self, dep: Deployed, size: int) -> dict[str, Any]:
        """Batch-1 and serving-batch latency of a deployed model, as EvalResult metrics.

        Each is timed interleaved with the reference (LatencyReference) in one window under the machine's
        exclusive compute lock; `latency_ms` / `latency_batch_ms` are drift-corrected (ratio x the
        reference's calibrated median), `_abs_ms` the window's own medians, `_ratio`, `_ref_ms`,
        `_ref_study_ms`, `_ci_*`, `_load`, `_busy_cpus` the rest (EvalResult docstring).
        """
        d = self.exp.device
        ref = self.latency_reference()  # before the lock: calibrating takes it window by window
        x1 = torch.randn(1, self.data.in_chans, size, size, device=self.device)
        xb = torch.randn(d.batch_size, self.data.in_chans, size, size, device=self.device)
        recalibrated = False
        while True:
            with latency_lock():  # one exclusive hold for both (re-entrant)
                s1, n1, dev1 = self._paired_window(dep, x1, ref.dep, ref.x1, ref.study_ms)
                sb, nb, devb = self._paired_window(dep, xb, ref.dep, ref.xb, ref.study_batch_ms)
            if recalibrated or not (is_stale(ref.study_ms, s1.ref_median_ms)
                                    or is_stale(ref.study_batch_ms, sb.ref_median_ms)):
                break
            # a calibration taken under load: measure it again (once, shared), then time again
            ref, recalibrated = self.latency_reference(stale=ref.calibration), True
        m = s1.to_metrics("latency", ref.study_ms)
        m.update(sb.to_metrics("latency_batch", ref.study_batch_ms, include_context=False))
        m.update({"latency_attempts": n1, "latency_ref_deviation": dev1,
                  "latency_batch_attempts": nb, "latency_batch_ref_deviation": devb,
                  "latency_disturbed": bool(max(dev1, devb) > d.reference_tolerance),
                  "latency_recalibrated": recalibrated,
                  "latency_calibrated_at": ref.calibration.get("created")})
        m.update({"batch_size": d.batch_size, "precision": dep.precision, "provider": dep.provider,
                  "size_bytes": dep.size_bytes, "latency_protocol": PROTOCOL_NOTE, "latency_note": PROTOCOL_NOTE,
                  "latency_exclusive": d.exclusive_measurement})
        if dep.int8_scheme is not None:
            m["int8_scheme"] = dep.int8_scheme
        return m

    def _paired_window(self, dep: Deployed, x: torch.Tensor, ref_dep: Deployed, ref_x: torch.Tensor,
                       expected_ms: float) -> tuple[PairedStats, int, float]:
        """One paired window; again (up to device.max_attempts) while the reference in it is more than
        device.reference_tolerance off its calibrated median: a transient that slowed the reference
        (host steal, another process) slows two models unequally, so that window's ratio is not trusted.
        Returns the least disturbed window, the attempts made and its reference's relative deviation."""
        d = self.exp.device
        kw = dict(min_repeats=d.min_repeats, max_seconds=d.max_seconds, target_cv=d.target_cv,
                  min_seconds=min(d.min_seconds, d.max_seconds))  # a short cap wins
        best: tuple[PairedStats, float] | None = None
        attempts = 0
        while attempts < d.max_attempts:
            attempts += 1
            s = dep.measure_paired(x, ref_dep, ref_x, **kw)
            kw["warmup_seconds"] = 0.05  # both models are warm after the first window
            deviation = abs(s.ref_median_ms / expected_ms - 1) if expected_ms > 0 else 0.0
            if best is None or deviation < best[1]:
                best = (s, deviation)
            if deviation <= d.reference_tolerance:
                break
        assert best is not None
        return best[0], attempts, round(best[1], 4)
