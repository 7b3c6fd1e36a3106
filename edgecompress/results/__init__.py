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

# export / retarget need torch and the evaluators: imported on first use, so `edgecompress.results` stays light
_LAZY = {
    "ExportError": "export", "ExportResult": "export", "ModelCheck": "export", "choose_trial": "export",
    "export_trial": "export", "load_export_config": "export",
    "RetargetSummary": "retarget", "RetargetedTrial": "retarget", "retarget_study": "retarget",
}


def __getattr__(name: str):  # noqa: ANN202 - PEP 562 lazy attribute
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"edgecompress.results.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edgecompress.results' has no attribute {name!r}")


__all__ = [
    "ExportError",
    "ExportResult",
    "ModelCheck",
    "RetargetSummary",
    "RetargetedTrial",
    "Selection",
    "build_report",
    "choose_trial",
    "compute_hypervolume",
    "export_trial",
    "hypervolume",
    "hypervolume_history",
    "knee_point",
    "load_export_config",
    "load_study",
    "non_dominated",
    "nondominated_ranks",
    "pareto_front",
    "pareto_ranks",
    "parse_latency_ms",
    "reference_point",
    "retarget_study",
    "select",
    "study_objectives",
    "study_to_frame",
]
