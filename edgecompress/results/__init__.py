"""Results: choosing a point of a front, gains against the uncompressed trial, hypervolume history, HTML report
(export/retarget: edgecompress.deploy).

The study frame, THE front and hypervolume live in edgecompress.study and are re-exported here;
`pareto_front` is `edgecompress.study.front`.
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
from edgecompress.study import (
    compute_hypervolume,
    front,
    front_ranks,
    hypervolume,
    load_study,
    non_dominated,
    nondominated_ranks,
    reference_point,
    study_objectives,
    study_to_frame,
)

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
    "compute_hypervolume",
    "front",
    "front_ranks",
    "hypervolume",
    "hypervolume_history",
    "knee_point",
    "load_study",
    "non_dominated",
    "nondominated_ranks",
    "pareto_front",
    "parse_latency_ms",
    "reference_point",
    "select",
    "study_objectives",
    "study_to_frame",
]
