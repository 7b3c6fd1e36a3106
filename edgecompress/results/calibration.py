"""Does a study's measured latency rest on one reference calibration per machine?

Every measured latency is a ratio to the uncompressed reference times that reference's calibrated median
(evaluators/reference_latency.py). A calibration found taken under load is measured again, so trials of
one study can carry different reference medians: their latencies are then not on quite the same scale,
which can reorder close front members. `edgecompress remeasure` re-times a study in one session.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pandas as pd

from edgecompress.study import attrs as A

CALIBRATION_KEY = "latency_calibrated_at"  # when the trial's reference calibration was taken
REFERENCE_KEY = "latency_ref_study_ms"  # that calibration's batch-1 median of the reference


class CalibrationMix(NamedTuple):
    """Measured trials of one machine whose latencies rest on more than one reference calibration."""

    device: str
    trials_per_calibration: list[int]  # in the order the calibrations were taken
    reference_ms: list[float]  # each calibration's batch-1 reference median, same order
    spread: float  # max / min reference median - 1

    def note(self, study: str) -> str:
        """One line for pareto and the report."""
        counts = ", ".join(map(str, self.trials_per_calibration))
        low, high = min(self.reference_ms), max(self.reference_ms)
        return (f"latencies measured on {self.device} rest on {len(self.reference_ms)} reference calibrations "
                f"(reference {low:.4g}-{high:.4g} ms at batch 1, {100 * self.spread:.1f}% apart; "
                f"trials per calibration: {counts}), "
                f"so close front members may be ordered by the calibration: `edgecompress remeasure {study}` "
                f"times them again in one session")


def calibration_mixes(df: pd.DataFrame) -> list[CalibrationMix]:
    """Per machine (`device_name`), the calibrations its measured complete trials rest on, where there are
    several; [] when every machine has one (or the study predates the calibration record)."""
    if not len(df) or CALIBRATION_KEY not in df or REFERENCE_KEY not in df:
        return []
    done = df[(df["state"] == "COMPLETE") & df[CALIBRATION_KEY].notna() & df[REFERENCE_KEY].notna()]
    if A.LATENCY_SOURCE in done:
        done = done[done[A.LATENCY_SOURCE].fillna("measured") == "measured"]
    device = done["device_name"] if "device_name" in done else pd.Series("this machine", index=done.index)
    out: list[CalibrationMix] = []
    for name, group in done.groupby(device.fillna("this machine"), sort=True):
        by_cal = group.groupby(CALIBRATION_KEY, sort=True)
        if by_cal.ngroups < 2:
            continue
        refs = [float(g[REFERENCE_KEY].iloc[0]) for _, g in by_cal]
        counts = [int(len(g)) for _, g in by_cal]
        spread = max(refs) / min(refs) - 1 if min(refs) > 0 else float("inf")
        out.append(CalibrationMix(str(name), counts, refs, spread))
    return out


def calibration_notes(df: pd.DataFrame, study: Any = None) -> list[str]:
    """The notes of `calibration_mixes` for a study named `study` (default: the frame's study_name)."""
    name = study if study is not None else df.attrs.get("study_name", "STUDY")
    return [m.note(str(name)) for m in calibration_mixes(df)]
