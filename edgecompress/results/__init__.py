"""Results: choosing a point of a front, gains against the uncompressed trial, hypervolume history, HTML report
(export/retarget: edgecompress.export). The study frame, THE front and hypervolume are edgecompress.study's.
"""

from __future__ import annotations

from edgecompress.results.calibration import CalibrationMix, calibration_mixes, calibration_notes
from edgecompress.results.gains import GAIN_COLUMNS, base_trial, front_gains, gains
from edgecompress.results.pareto import (
    Selection,
    hypervolume_history,
    knee_point,
    pareto_front,
    parse_latency_ms,
    select,
)
from edgecompress.results.report import build_report

__all__ = [
    "CalibrationMix",
    "calibration_mixes",
    "calibration_notes",
    "GAIN_COLUMNS",
    "base_trial",
    "front_gains",
    "gains",
    "Selection",
    "build_report",
    "hypervolume_history",
    "knee_point",
    "pareto_front",
    "parse_latency_ms",
    "select",
]
