"""Results: study -> DataFrame, constrained Pareto fronts, hypervolume, choosing a point, HTML report."""

from __future__ import annotations

from edgecompress.results.frame import load_study, study_objectives, study_to_frame
from edgecompress.results.hypervolume import compute_hypervolume, hypervolume, reference_point
from edgecompress.results.pareto import (
    Selection,
    hypervolume_history,
    knee_point,
    non_dominated,
    nondominated_ranks,
    pareto_front,
    pareto_ranks,
    parse_latency_ms,
    select,
)
from edgecompress.results.report import build_report

__all__ = [
    "Selection",
    "build_report",
    "compute_hypervolume",
    "hypervolume",
    "hypervolume_history",
    "knee_point",
    "load_study",
    "non_dominated",
    "nondominated_ranks",
    "pareto_front",
    "pareto_ranks",
    "parse_latency_ms",
    "reference_point",
    "select",
    "study_objectives",
    "study_to_frame",
]
