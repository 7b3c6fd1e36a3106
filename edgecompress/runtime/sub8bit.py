"""Below 8 bits there are no real kernels: `estimate_latency` scales a measured latency by the BitOPs ratio and
`estimate_sub8bit` applies it to a whole measurement (latencies and size)."""

from __future__ import annotations

from typing import Any

from edgecompress.study import attrs as A


def estimate_latency(
    measured_ms: float, measured_bits: int | tuple[int, int], target_w_bits: int, target_a_bits: int
) -> float:
    """ESTIMATE (no real kernels) of a sub-8-bit model's latency: measured latency x BitOPs ratio.

    MACs are the same for both, so the BitOPs ratio is (w x a bits of the target) / (w x a bits of the
    measured model). Callers must record `latency_source="estimated"` next to the value.
    """
    mw, ma = (measured_bits, measured_bits) if isinstance(measured_bits, int) else measured_bits
    for name, v in (("measured w bits", mw), ("measured a bits", ma), ("target_w_bits", target_w_bits),
                    ("target_a_bits", target_a_bits)):
        if not isinstance(v, int) or not 1 <= v <= 32:
            raise ValueError(f"measured_bits, target_w_bits and target_a_bits must be ints in 1..32, got {name} = "
                             f"{v!r} (estimate_latency)")
    if not measured_ms > 0:
        raise ValueError(f"measured_ms must be > 0, got {measured_ms!r} (estimate_latency)")
    return float(measured_ms) * (target_w_bits * target_a_bits) / (mw * ma)


#: latency keys of a measurement (EvalResult metrics) that a sub-8-bit estimate scales (the reference's
#: own medians, CVs and load are left as measured)
SCALED_LATENCY_KEYS = tuple(
    f"{p}_{k}" for p in ("latency", "latency_batch")
    for k in ("ms", "p90_ms", "mean_ms", "ci_low_ms", "ci_high_ms", "abs_ms", "abs_ci_low_ms", "abs_ci_high_ms",
              "ratio", "ratio_ci_low", "ratio_ci_high")
)
PRECISION_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8}


def estimate_sub8bit(metrics: dict[str, Any], base_precision: str, w_bits: int, a_bits: int) -> dict[str, Any]:
    """ESTIMATE of a w_bits/a_bits model (w_bits < 8) from the measurement of its deployed form.

    `metrics` holds the measured latencies (SCALED_LATENCY_KEYS, those present are scaled) and
    `size_bytes` of the deployed form, whose precision is `base_precision` (`Deployed.base_precision`:
    int8, or fp32 where int8 fell back, e.g. torch on CUDA). Latency is scaled by the BitOPs ratio from the
    base precision's bits (estimate_latency) and size by w_bits / base bits. Returns the updated keys
    with latency_source="estimated" and a latency_note, to merge into `metrics`.
    """
    if base_precision not in PRECISION_BITS:
        raise ValueError(f"base_precision must be one of {list(PRECISION_BITS)}, got {base_precision!r} "
                         "(estimate_sub8bit)")
    bits = PRECISION_BITS[base_precision]
    out: dict[str, Any] = {k: estimate_latency(metrics[k], bits, w_bits, a_bits)
                           for k in SCALED_LATENCY_KEYS if k in metrics}
    where = f" on {metrics['device_name']}" if metrics.get("device_name") else ""
    out[A.LATENCY_SOURCE] = "estimated"
    out["latency_note"] = (f"{w_bits}/{a_bits}-bit latency estimated from the {base_precision} model measured{where} "
                           "x BitOPs ratio (no sub-8-bit kernels on this runtime)")
    if metrics.get("latency_protocol"):  # the measured model's latency is itself drift-corrected
        out["latency_note"] += f"; measured {metrics['latency_protocol']}"
    if "size_bytes" in metrics:
        out["size_bytes"] = int(round(metrics["size_bytes"] * w_bits / bits))
    return out
