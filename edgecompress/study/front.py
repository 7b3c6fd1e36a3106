"""THE Pareto front of a study: one function for the search summary, `pareto`, the report, export's
choice and the cascade's candidates, with its ranks from the same core.

Constrained domination (Deb): a feasible point dominates every infeasible one; among infeasible points
the smaller total violation dominates; among feasible points the usual Pareto rule applies (no worse in
every objective, strictly better in one). Identical value vectors do not dominate each other: all such
trials are on the front (as Optuna's `best_trials`). Rows with a non-finite objective are never on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from edgecompress.study import attrs as A
from edgecompress.study.frame import as_frame, frame_objectives
from edgecompress.study.hypervolume import as_points, check_directions, to_minimization

__all__ = [
    "candidates", "completed", "domination_matrix", "frame_violation", "front", "front_ranks", "non_dominated",
    "nondominated_ranks", "sort_key",
]

FrameLike = Any  # a DataFrame from study_to_frame, an optuna.Study, or a study name / URL / path


# ---- array level ------------------------------------------------------------------------------------


def _prepare(points: Any, directions: Sequence[str], violations: Any) -> tuple[np.ndarray, np.ndarray]:
    pts = as_points(points)
    dirs = check_directions(directions, pts.shape[1]) if pts.shape[0] else list(directions)
    loss = to_minimization(pts, dirs) if pts.shape[0] else pts
    if violations is None:
        viol = np.zeros(len(pts))
    else:
        viol = np.asarray(violations, dtype=float).reshape(-1)
        if viol.shape[0] != pts.shape[0]:
            raise ValueError(f"violations: {viol.shape[0]} values for {pts.shape[0]} points")
        viol = np.where(np.isnan(viol), np.inf, viol)
    return loss, viol


def domination_matrix(loss: np.ndarray, violations: np.ndarray) -> np.ndarray:
    """D[i, j] is True when point i constrained-dominates point j (minimisation form)."""
    le = np.all(loss[:, None, :] <= loss[None, :, :], axis=2)
    lt = np.any(loss[:, None, :] < loss[None, :, :], axis=2)
    feas = violations <= 0
    fi, fj = feas[:, None], feas[None, :]
    pareto = le & lt & fi & fj
    feas_over_infeas = fi & ~fj
    less_violation = ~fi & ~fj & (violations[:, None] < violations[None, :])
    return pareto | feas_over_infeas | less_violation


def nondominated_ranks(
    points: Any, directions: Sequence[str], violations: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Front index of each point (0 = non-dominated); rows with non-finite values rank last."""
    loss, viol = _prepare(points, directions, violations)
    n = len(loss)
    ranks = np.full(n, -1, dtype=int)
    finite = np.all(np.isfinite(loss), axis=1) if n else np.zeros(0, dtype=bool)
    idx = np.flatnonzero(finite)
    if len(idx):
        dom = domination_matrix(loss[idx], viol[idx])
        remaining = np.ones(len(idx), dtype=bool)
        rank = 0
        while remaining.any():
            dominated = (dom & remaining[:, None]).any(axis=0)
            front = remaining & ~dominated
            ranks[idx[front]] = rank
            remaining &= ~front
            rank += 1
    last = ranks.max() + 1 if (ranks >= 0).any() else 0
    ranks[~finite] = last
    return ranks


def non_dominated(
    points: Any, directions: Sequence[str], violations: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of the constrained non-dominated points (`violations`: total, >0 = infeasible)."""
    loss, viol = _prepare(points, directions, violations)
    if len(loss) == 0:
        return np.zeros(0, dtype=bool)
    finite = np.all(np.isfinite(loss), axis=1)
    mask = np.zeros(len(loss), dtype=bool)
    idx = np.flatnonzero(finite)
    if len(idx):
        dom = domination_matrix(loss[idx], viol[idx])
        mask[idx] = ~dom.any(axis=0)
    return mask


# ---- frame level ------------------------------------------------------------------------------------


def frame_violation(df: pd.DataFrame) -> np.ndarray:
    total = df["total_violation"].to_numpy(dtype=float) if "total_violation" in df else np.zeros(len(df))
    total = np.nan_to_num(total, nan=0.0)
    if "feasible" in df:
        feas = df["feasible"].to_numpy(dtype=bool)
        # infeasible by state but with no recorded amount: still after every feasible point
        total = np.where(feas, 0.0, np.maximum(total, 1e-12))
    return total


def completed(df: pd.DataFrame, objectives: Sequence[Mapping[str, str]]) -> pd.DataFrame:
    """COMPLETE trials whose objective values are all finite."""
    names = [o["name"] for o in objectives]
    mask = np.ones(len(df), dtype=bool)
    if "state" in df:
        mask &= (df["state"] == "COMPLETE").to_numpy()
    if names and len(df):
        mask &= np.all(np.isfinite(df[names].to_numpy(dtype=float)), axis=1)
    return df[mask]


def sort_key(df: pd.DataFrame, objectives: Sequence[Mapping[str, str]]) -> tuple[str, bool]:
    """(column, ascending) to sort a front by: latency_ms when present, else the first minimised objective."""
    if "latency_ms" in df.columns:
        return "latency_ms", True
    for o in objectives:
        if o["direction"] == "minimize":
            return o["name"], True
    return objectives[0]["name"], False


def candidates(
    df: pd.DataFrame, objectives: Sequence[Mapping[str, str]], *, fidelity: str | None = None,
    deployable: bool = False, feasible_only: bool = False,
) -> pd.DataFrame:
    """The rows a front is computed over: complete trials with finite objectives, optionally only one
    fidelity ("proxy" search trials or "final" finalized ones), only deployable ones (latency measured
    on the study's device, not estimated) and only feasible ones."""
    rows = completed(df, objectives)
    if fidelity is not None:
        col = rows[A.FIDELITY] if A.FIDELITY in rows else pd.Series(A.DEFAULT_FIDELITY, index=rows.index)
        rows = rows[(col.fillna(A.DEFAULT_FIDELITY) == fidelity).to_numpy()]
    if deployable and A.LATENCY_SOURCE in rows:
        rows = rows[(rows[A.LATENCY_SOURCE] != "estimated").to_numpy()]
    if feasible_only and "feasible" in rows:
        rows = rows[rows["feasible"].astype(bool).to_numpy()]
    return rows


def front_ranks(
    study_or_frame: FrameLike, objectives: Any = None, *, fidelity: str | None = None, deployable: bool = False,
    feasible_only: bool = False,
) -> pd.Series:
    """Constrained non-domination rank per row (0 = on the front) over `candidates`; -1 for other rows."""
    df = as_frame(study_or_frame)
    objs = frame_objectives(df, objectives)
    rows = candidates(df, objs, fidelity=fidelity, deployable=deployable, feasible_only=feasible_only)
    out = pd.Series(-1, index=df.index, dtype=int, name="pareto_rank")
    if len(rows):
        names = [o["name"] for o in objs]
        out.loc[rows.index] = nondominated_ranks(
            rows[names].to_numpy(dtype=float), [o["direction"] for o in objs], frame_violation(rows)
        )
    return out


def front(
    study_or_frame: FrameLike, objectives: Any = None, *, fidelity: str | None = None, deployable: bool = False,
    feasible_only: bool = False, storage: Any = None,
) -> pd.DataFrame:
    """The Pareto front of a study (or its frame) as frame rows, sorted by latency (see `sort_key`).

    `objectives` default to the study's. `fidelity`, `deployable` and `feasible_only` choose the trials
    the front is computed over (see `candidates`): a deployable front is the front of the deployable
    trials, not the full front filtered afterwards. Without `feasible_only`, a study with no feasible
    trial has the least-violating trials as its front (their `feasible` is False).
    """
    df = as_frame(study_or_frame, storage)
    objs = frame_objectives(df, objectives)
    ranks = front_ranks(df, objs, fidelity=fidelity, deployable=deployable, feasible_only=feasible_only)
    rows = df[(ranks == 0).to_numpy()].copy()
    key, ascending = sort_key(rows, objs)
    by = [key, "number"] if "number" in rows.columns else [key]
    rows = rows.sort_values(by, ascending=[ascending, True][: len(by)], kind="stable")
    rows.attrs = {**df.attrs, "objectives": objs, "front": {"fidelity": fidelity, "deployable": deployable,
                                                            "feasible_only": feasible_only}}
    return rows
