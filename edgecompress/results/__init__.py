"""Results: choosing a point of a front, hypervolume history, HTML report, export and retarget.

The study frame, THE front and hypervolume live in edgecompress.study and are re-exported here;
`pareto_front` is `edgecompress.study.front`.
"""

from __future__ import annotations

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
    "front",
    "front_ranks",
    "hypervolume",
    "hypervolume_history",
    "knee_point",
    "load_export_config",
    "load_study",
    "non_dominated",
    "nondominated_ranks",
    "pareto_front",
    "parse_latency_ms",
    "reference_point",
    "retarget_study",
    "select",
    "study_objectives",
    "study_to_frame",
]
