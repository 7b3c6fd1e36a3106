"""Hypervolume: the one place that wraps Optuna's private routine, with a numpy fallback.

Reference point rule (used everywhere a reference is not given explicitly):
    put every objective in minimisation form (maximised ones are negated), then for each objective
    reference = worst observed value + 10% of the observed range (worst - best); when the range is 0
    the pad is 10% of |worst|, or 1.0 when that is 0 too. "Observed" means every completed trial with
    finite values (feasible or not), so the reference stays fixed over a study's history.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# The one private API of a dependency we use: Optuna has no public hypervolume function (only plots),
# and its exact WFG routine is much faster than ours in 3+ objectives. Kept here, nowhere else, with a
# numpy fallback that the tests compare against, so an Optuna without the module still works.
try:
    from optuna._hypervolume import compute_hypervolume as _optuna_hv
except ImportError:  # pragma: no cover - exercised only on an Optuna without the module
    _optuna_hv = None

REFERENCE_PAD = 0.1
DIRECTIONS = ("maximize", "minimize")


def check_directions(directions: Sequence[str], n_objectives: int) -> list[str]:
    """Validate directions ('maximize'/'minimize', one per objective) and return them as a list."""
    dirs = [str(d).lower() for d in directions]
    if len(dirs) != n_objectives:
        raise ValueError(f"directions: {len(dirs)} given for {n_objectives} objectives")
    for d in dirs:
        if d not in DIRECTIONS:
            raise ValueError(f"directions: expected 'maximize' or 'minimize', got {d!r}")
    return dirs


def as_points(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Points as a float (n, m) array; an empty input becomes shape (0, 0)."""
    arr = np.asarray(points, dtype=float)
    if arr.size == 0:
        return arr.reshape(0, arr.shape[1] if arr.ndim == 2 else 0)
    if arr.ndim != 2:
        raise ValueError(f"points: expected a 2-D array (n points x m objectives), got shape {arr.shape}")
    return arr


def to_minimization(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Negate maximised objectives so that smaller is better in every column."""
    pts = as_points(points)
    dirs = check_directions(directions, pts.shape[1])
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in dirs])
    return pts * signs


def reference_point(points: np.ndarray, directions: Sequence[str], pad: float = REFERENCE_PAD) -> np.ndarray:
    """The documented reference rule, returned in the objectives' own units and directions."""
    loss = to_minimization(points, directions)
    loss = loss[np.all(np.isfinite(loss), axis=1)]
    if len(loss) == 0:
        raise ValueError("points: no finite points to derive a reference from (reference_point)")
    worst, best = loss.max(axis=0), loss.min(axis=0)
    span = worst - best
    fallback = np.where(np.abs(worst) > 0, np.abs(worst), 1.0)
    span = np.where(span > 0, span, fallback)
    ref_loss = worst + pad * span
    return to_minimization(ref_loss[None, :], directions)[0]  # negation is its own inverse


def compute_hypervolume(loss_vals: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by minimisation-form points and bounded by `reference`.

    Points that are worse than the reference in some objective contribute nothing and are dropped.
    Uses Optuna's exact WFG routine when importable, else the numpy slicing fallback.
    """
    loss = as_points(loss_vals)
    ref = np.asarray(reference, dtype=float)
    if loss.shape[0] == 0:
        return 0.0
    if ref.shape != (loss.shape[1],):
        raise ValueError(f"reference: expected {loss.shape[1]} values, got shape {ref.shape}")
    loss = loss[np.all(np.isfinite(loss), axis=1)]
    loss = loss[np.all(loss <= ref, axis=1)]
    if loss.shape[0] == 0:
        return 0.0
    if _optuna_hv is not None:
        return float(_optuna_hv(loss, ref))
    return hypervolume_numpy(loss, ref)


def hypervolume_numpy(loss_vals: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume by slicing along the last objective (2-D sweep at the bottom); no Optuna."""
    loss = as_points(loss_vals)
    ref = np.asarray(reference, dtype=float)
    loss = loss[np.all(loss <= ref, axis=1)]
    if loss.shape[0] == 0:
        return 0.0
    return _hv_slice(loss, ref)


def _hv_slice(loss: np.ndarray, ref: np.ndarray) -> float:
    d = loss.shape[1]
    if d == 1:
        return float(ref[0] - loss[:, 0].min())
    if d == 2:
        order = np.argsort(loss[:, 0], kind="stable")
        xs, ys = loss[order, 0], loss[order, 1]
        ymin = np.minimum.accumulate(ys)
        widths = np.diff(np.append(xs, ref[0]))
        return float(np.sum(widths * (ref[1] - ymin)))
    order = np.argsort(loss[:, -1], kind="stable")
    pts = loss[order]
    zs = np.append(pts[:, -1], ref[-1])
    total = 0.0
    for i in range(len(pts)):
        depth = zs[i + 1] - zs[i]
        if depth > 0:
            total += depth * _hv_slice(pts[: i + 1, :-1], ref[:-1])
    return total


def hypervolume(
    points: Sequence[Sequence[float]] | np.ndarray,
    directions: Sequence[str],
    reference: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Hypervolume of `points` (objectives in their own directions) against `reference`.

    `reference` is given in the objectives' own units (e.g. accuracy 0.5, latency 10 ms); when None
    it follows the module's documented rule applied to `points` themselves.
    """
    pts = as_points(points)
    if pts.shape[0] == 0:
        return 0.0
    dirs = check_directions(directions, pts.shape[1])
    ref = reference_point(pts, dirs) if reference is None else np.asarray(reference, dtype=float)
    if ref.shape != (pts.shape[1],):
        raise ValueError(f"reference: expected {pts.shape[1]} values, got {list(np.ravel(ref))}")
    return compute_hypervolume(to_minimization(pts, dirs), to_minimization(ref[None, :], dirs)[0])


def normalized_hypervolume(front_points: Any, all_points: Any, directions: Sequence[str]) -> float | None:
    """Hypervolume of `front_points` in [0, 1] after scaling each objective to the range of `all_points`,
    with the reference just past the worst corner (1.1 on each scaled axis): a progress indicator that
    is comparable while a search runs (the reported one is `hypervolume` with the documented reference)."""
    pts = as_points(all_points)
    fp = as_points(front_points)
    if fp.shape[0] == 0 or pts.shape[0] == 0:
        return None
    loss, front_loss = to_minimization(pts, directions), to_minimization(fp, directions)
    loss = loss[np.all(np.isfinite(loss), axis=1)]
    lo, hi = loss.min(axis=0), loss.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = (front_loss - lo) / span
    ref = np.full(loss.shape[1], 1.1)
    return compute_hypervolume(scaled, ref) / float(np.prod(ref))
