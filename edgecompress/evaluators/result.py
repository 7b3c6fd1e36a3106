"""EvalResult: what evaluating one CompressionConfig produces (shared by search, results, cascade).

Metric keys (all optional except where noted; values are plain floats/ints/strings):
    accuracy            validation top-1 in [0, 1] (the search objective; never the test split)
    test_accuracy       test top-1 in [0, 1] (final reports only)
    latency_ms          latency at batch 1, milliseconds, drift-corrected (objective, fronts): the median
                        per-pair ratio to the uncompressed reference timed interleaved in the same window x
                        the reference's calibrated (study-wide, per machine) median
    latency_p90_ms      90th percentile at batch 1 (same correction); latency_mean_ms likewise
    latency_cv          coefficient of variation of the batch-1 samples (absolute)
    latency_ci_low_ms, latency_ci_high_ms   95% interval of latency_ms (the ratio's interval x the reference)
    latency_abs_ms      the absolute median in its window; latency_abs_ci_low_ms / _high_ms its interval
    latency_ratio       median per-pair ratio trial / reference; latency_ratio_ci_low / _high
    latency_ref_ms      the reference's median in the same window; latency_ref_study_ms its calibrated median
    latency_load, latency_busy_cpus   1-min loadavg and CPUs kept busy by other processes in the window
    latency_repeats, latency_seconds, latency_settled   pairs timed, window length, interval target met
    latency_attempts, latency_ref_deviation   windows tried (one whose reference strayed more than
                        device.reference_tolerance from its calibrated median is measured again) and the kept
                        window's reference deviation; latency_disturbed: no window within the tolerance
    latency_batch_*     the same for one serving batch (`batch_size` images); latency_batch_ms is corrected
    batch_size          the serving batch size used for latency_batch_ms
    latency_protocol    how latency was taken, in words; latency_note: the same, or the sub-8-bit estimate
    latency_exclusive   device.exclusive_measurement: training steps (of processes that take part) waited
    latency_source      "measured" or "estimated" (sub-8-bit: BitOPs-scaled, no real kernels)
    macs, bitops, params, param_bytes, size_bytes
    input_size          input side length in pixels
    achieved_prune      achieved channel-pruning ratio (round_to changes the asked one)
    device, device_name, backend, precision, threads, torch_version, runtime_version
    finetune_seconds, eval_seconds
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from edgecompress.spaces.config import CompressionConfig
from edgecompress.study import attrs as A
from edgecompress.study.constraints import satisfied

State = Literal["complete", "infeasible", "failed", "pruned"]

ARTEFACT_FILES = {
    "config": "config.yaml",
    "metrics": "metrics.json",
    "model": "model.pt",
    "val_logits": "val_logits.npy",
    "val_labels": "val_labels.npy",
    "test_logits": "test_logits.npy",
    "test_labels": "test_labels.npy",
}


@dataclass
class EvalResult:
    """Measured objectives and metrics of one config; `state` says whether it is usable."""

    config: CompressionConfig
    state: State = "complete"
    metrics: dict[str, Any] = field(default_factory=dict)
    fail_reason: str | None = None
    violations: dict[str, float] = field(default_factory=dict)  # constraint name -> amount (>0 = violated)
    artefact_dir: str | None = None

    @property
    def feasible(self) -> bool:
        """Completed (or stopped early as infeasible) with no constraint violated: the study's rule."""
        return self.state == "complete" and satisfied(self.violations)

    def to_dict(self) -> dict[str, Any]:
        """The record of metrics.json (and of a Ray trial's report); keys named as the trial attrs they become."""
        return {
            A.CONFIG: self.config.to_dict(),
            A.CONFIG_HASH: self.config.config_hash(),
            "state": self.state,
            "metrics": dict(self.metrics),
            A.FAIL_REASON: self.fail_reason,
            A.VIOLATIONS: dict(self.violations),
            A.ARTEFACT_DIR: self.artefact_dir,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        return cls(
            config=CompressionConfig.from_dict(d[A.CONFIG]),
            state=d.get("state", "complete"),
            metrics=dict(d.get("metrics", {})),
            fail_reason=d.get(A.FAIL_REASON),
            violations=dict(d.get(A.VIOLATIONS, {})),
            artefact_dir=d.get(A.ARTEFACT_DIR),
        )
