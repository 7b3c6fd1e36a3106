"""Search: Optuna studies (system of record) over compression configs, optionally driven by Ray Tune."""

from __future__ import annotations

from edgecompress.search.objective import TrialFailed, constraint_values, make_objective
from edgecompress.search.optuna_runner import SearchSummary, run_search
from edgecompress.search.progress import StudyStats, is_counted, study_stats
from edgecompress.search.samplers import SAMPLERS, make_sampler, resolve_sampler_name
from edgecompress.search.study_setup import create_or_load_study, space_for


def run_ray_search(*args, **kwargs):  # noqa: ANN002, ANN003 - lazy: importing ray costs seconds
    """See edgecompress.search.ray_runner.run_ray_search (Ray is imported only when this is called)."""
    from edgecompress.search.ray_runner import run_ray_search as _run

    return _run(*args, **kwargs)


__all__ = [
    "SAMPLERS",
    "SearchSummary",
    "StudyStats",
    "TrialFailed",
    "constraint_values",
    "create_or_load_study",
    "is_counted",
    "make_objective",
    "make_sampler",
    "resolve_sampler_name",
    "run_ray_search",
    "run_search",
    "space_for",
    "study_stats",
]
