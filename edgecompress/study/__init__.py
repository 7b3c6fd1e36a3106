"""The study contract under search, results and cascade: where studies live, what their objectives are
called, which trials are feasible, THE front (with ranks and hypervolume), and the constraint table.

Layer: spaces <- study <- evaluators <- search <- results <- cascade <- cli (import-linter, `make lint`).
"""

from __future__ import annotations

from edgecompress.study import attrs
from edgecompress.study.attrs import objective_dicts, set_objectives, study_objectives
from edgecompress.study.constraints import (
    CONSTRAINTS,
    ConstraintSpec,
    active_constraints,
    constraint_values,
    violation,
    violations,
)
from edgecompress.study.frame import Feasibility, as_frame, counts, frame_objectives, study_to_frame, trial_feasibility
from edgecompress.study.front import candidates, front, front_ranks, non_dominated, nondominated_ranks
from edgecompress.study.hypervolume import compute_hypervolume, hypervolume, normalized_hypervolume, reference_point
from edgecompress.study.record import TrialRecord
from edgecompress.study.storage import default_storage_url, load_study, make_storage, storage_for_path

__all__ = [
    "CONSTRAINTS",
    "ConstraintSpec",
    "Feasibility",
    "TrialRecord",
    "active_constraints",
    "as_frame",
    "attrs",
    "candidates",
    "compute_hypervolume",
    "constraint_values",
    "counts",
    "default_storage_url",
    "frame_objectives",
    "front",
    "front_ranks",
    "hypervolume",
    "load_study",
    "make_storage",
    "non_dominated",
    "nondominated_ranks",
    "normalized_hypervolume",
    "objective_dicts",
    "reference_point",
    "set_objectives",
    "storage_for_path",
    "study_objectives",
    "study_to_frame",
    "trial_feasibility",
    "violation",
    "violations",
]
