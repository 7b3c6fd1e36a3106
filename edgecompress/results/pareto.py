"""Choosing a point from a front (budgets, knee) and the hypervolume history of a study.

The front itself is edgecompress.study.front (one function for every command); `pareto_front` is it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.study.frame import VIOLATION_PREFIX, as_frame, frame_objectives
from edgecompress.study.front import completed, frame_violation
from edgecompress.study.front import front as pareto_front
from edgecompress.study.hypervolume import compute_hypervolume, reference_point, to_minimization
from edgecompress.utils import as_float

FrameLike = Any  # a DataFrame from study_to_frame, an optuna.Study, or a study name / URL

__all__ = ["Selection", "hypervolume_history", "knee_point", "pareto_front", "parse_latency_ms", "select"]


def hypervolume_history(
    df_or_study: FrameLike, objectives: Any = None, reference: Sequence[float] | None = None
) -> pd.DataFrame:
    """Hypervolume of the feasible trials seen so far, after each complete trial (by number).

    The reference follows hypervolume.py's rule over all complete trials (feasible or not) unless
    given; it is stored in `result.attrs["reference"]` in the objectives' own units.
    """
    df = as_frame(df_or_study)
    objs = frame_objectives(df, objectives)
    done = completed(df, objs).sort_values("number")
    names, dirs = [o["name"] for o in objs], [o["direction"] for o in objs]
    out = pd.DataFrame({"number": done["number"].to_numpy(dtype=int), "hypervolume": 0.0})
    if len(done) == 0:
        out.attrs["reference"] = None
        return out
    pts = done[names].to_numpy(dtype=float)
    ref = reference_point(pts, dirs) if reference is None else np.asarray(reference, dtype=float)
    loss, ref_loss = to_minimization(pts, dirs), to_minimization(ref[None, :], dirs)[0]
    feas = frame_violation(done) <= 0
    front = np.zeros((0, len(names)))
    hv, values = 0.0, []
    for i in range(len(done)):
        if feas[i]:
            p = loss[i]
            if not np.any(np.all(front <= p, axis=1)):  # not weakly dominated: the volume grows
                keep = ~(np.all(p <= front, axis=1) & np.any(p < front, axis=1))
                front = np.vstack([front[keep], p])
                hv = compute_hypervolume(front, ref_loss)
        values.append(hv)
    out["hypervolume"] = values
    out.attrs["reference"] = [float(x) for x in ref]
    out.attrs["objectives"] = objs
    return out


# ---- choosing a point -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """A chosen trial: its row, whether it meets every budget and constraint, and by how much it misses."""

    number: int | None
    feasible: bool
    row: dict[str, Any]
    violations: dict[str, float] = field(default_factory=dict)  # name -> amount over the limit (>0)
    reason: str = ""


_UNITS_MS = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3, "ns": 1e-6, "": 1.0}


def parse_latency_ms(text: str | float) -> float:
    """'2ms', '500us', '0.5 s' or a bare number (milliseconds) -> milliseconds."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|us|µs|ns)?\s*", str(text))
        if not m:
            raise ConfigError(f"latency: cannot read {text!r} (examples: 2ms, 500us, 0.5s)")
        value = float(m.group(1)) * _UNITS_MS[m.group(2) or ""]
    if not value > 0:
        raise ConfigError(f"latency: must be > 0, got {text!r}")
    return value


def _records(front: Any) -> list[dict[str, Any]]:
    if isinstance(front, pd.DataFrame):
        return front.to_dict("records")
    return [dict(r) for r in front]


Budget = tuple[str, str, str, float]  # (name, column, "max"|"min", limit)


def _budget_violations(row: Mapping[str, Any], budgets: list[Budget]) -> dict[str, float]:
    out = {}
    for name, key, kind, limit in budgets:
        v = as_float(row.get(key))
        amount = math.inf if math.isnan(v) else (v - limit if kind == "max" else limit - v)
        out[name] = amount
    return out


def _row_violations(row: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in row.items():
        if k.startswith(VIOLATION_PREFIX):
            f = as_float(v)
            if not math.isnan(f) and f > 0:
                out[k[len(VIOLATION_PREFIX) :]] = f
    return out


def select(
    front: Any,
    max_latency: float | None = None,
    min_accuracy: float | None = None,
    max_size: float | None = None,
    *,
    prefer: str | None = None,
    latency_key: str = "latency_ms",
    accuracy_key: str = "accuracy",
    size_key: str = "size_bytes",
) -> Selection:
    """The best point of `front` under the budgets, or the nearest one (feasible=False) when none fits.

    Best = highest accuracy (ties: lower latency) when a latency/size budget or no budget is given,
    lowest latency (ties: higher accuracy) when only an accuracy floor is; `prefer` overrides
    ("accuracy" | "latency"). Nearest = smallest sum of violations relative to each limit; rows that
    break the study's own constraints come after those that do not.
    """
    rows = _records(front)
    if not rows:
        raise EdgeCompressError("select: the front is empty (no completed trials)")
    budgets: list[Budget] = []
    if max_latency is not None:
        if not max_latency > 0:
            raise ConfigError(f"max_latency: must be > 0, got {max_latency}")
        budgets.append((f"max_{latency_key}", latency_key, "max", float(max_latency)))
    if min_accuracy is not None:
        if not 0 <= min_accuracy <= 1:
            raise ConfigError(f"min_accuracy: must be in [0, 1], got {min_accuracy}")
        budgets.append((f"min_{accuracy_key}", accuracy_key, "min", float(min_accuracy)))
    if max_size is not None:
        if not max_size > 0:
            raise ConfigError(f"max_size: must be > 0, got {max_size}")
        budgets.append((f"max_{size_key}", size_key, "max", float(max_size)))
    for _, key, _, _ in budgets:
        if not any(key in r for r in rows):
            raise ConfigError(f"select: the front has no {key!r} column")
    if prefer is None:
        only_floor = min_accuracy is not None and max_latency is None and max_size is None
        prefer = "latency" if only_floor else "accuracy"
    if prefer not in ("accuracy", "latency"):
        raise ConfigError(f"prefer: expected 'accuracy' or 'latency', got {prefer!r}")

    def preference(r: Mapping[str, Any]) -> tuple[float, float]:
        acc, lat = as_float(r.get(accuracy_key)), as_float(r.get(latency_key))
        acc = -math.inf if math.isnan(acc) else acc
        lat = math.inf if math.isnan(lat) else lat
        return (-acc, lat) if prefer == "accuracy" else (lat, -acc)

    def study_ok(r: Mapping[str, Any]) -> bool:
        return bool(r.get("feasible", True))

    budget_v = [_budget_violations(r, budgets) for r in rows]
    ok = [study_ok(r) and all(a <= 0 for a in bv.values()) for r, bv in zip(rows, budget_v, strict=True)]
    limits = " and ".join(f"{key} {'<=' if kind == 'max' else '>='} {lim:g}" for _, key, kind, lim in budgets)
    best_by = "highest accuracy" if prefer == "accuracy" else "lowest latency"
    if any(ok):
        i = min((j for j in range(len(rows)) if ok[j]), key=lambda j: preference(rows[j]))
        reason = f"{best_by}" + (f" with {limits}" if limits else "")
        return Selection(_number(rows[i]), True, rows[i], {}, reason)

    def distance(j: int) -> tuple[bool, float, tuple[float, float]]:
        rel = 0.0
        for (_, _, _, lim), amount in zip(budgets, budget_v[j].values(), strict=True):
            if amount > 0:
                rel += amount / lim if lim > 0 else amount
        return (not study_ok(rows[j]), rel, preference(rows[j]))

    i = min(range(len(rows)), key=distance)
    viol = {k: v for k, v in budget_v[i].items() if v > 0}
    if not study_ok(rows[i]):
        viol.update(_row_violations(rows[i]))
    missed = ", ".join(f"{k} by {v:g}" for k, v in viol.items()) or "the study's constraints"
    what = f"no point meets {limits}" if limits else "no feasible point"
    reason = f"{what}; nearest is trial {_number(rows[i])}, missing {missed}"
    return Selection(_number(rows[i]), False, rows[i], viol, reason)


def _number(row: Mapping[str, Any]) -> int | None:
    n = row.get("number")
    return None if n is None or (isinstance(n, float) and math.isnan(n)) else int(n)


def knee_point(front: Any, objectives: Any = None) -> Selection:
    """The front point farthest from the line joining its two extremes, on axes normalised to [0, 1].

    Uses two objectives (default: the frame's first two, else accuracy and latency_ms) and the
    feasible points when there are any. With fewer than three points it returns the best point on
    the first objective.
    """
    df = front if isinstance(front, pd.DataFrame) else pd.DataFrame(_records(front))
    if len(df) == 0:
        raise EdgeCompressError("knee_point: the front is empty (no completed trials)")
    if objectives is None:
        default = [("accuracy", "maximize"), ("latency_ms", "minimize")]
        objectives = (df.attrs.get("objectives") or default)[:2]
    objs = frame_objectives(df, objectives)
    if len(objs) != 2:
        raise ConfigError(f"objectives: knee_point needs exactly two objectives, got {len(objs)}")
    names = [o["name"] for o in objs]
    cand = df[np.all(np.isfinite(df[names].to_numpy(dtype=float)), axis=1)]
    if "feasible" in cand and cand["feasible"].astype(bool).any():
        cand = cand[cand["feasible"].astype(bool).to_numpy()]
    if len(cand) == 0:
        raise EdgeCompressError("knee_point: no front point has finite objective values")
    loss = to_minimization(cand[names].to_numpy(dtype=float), [o["direction"] for o in objs])
    lo, hi = loss.min(axis=0), loss.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    good = (hi - loss) / span  # 1 = best on that axis
    a = int(np.lexsort((-good[:, 1], -good[:, 0]))[0])  # best on objective 0 (ties: best on 1)
    b = int(np.lexsort((-good[:, 0], -good[:, 1]))[0])
    if len(cand) < 3 or np.allclose(good[a], good[b]):
        i, dist = a, 0.0
    else:
        direction = good[b] - good[a]
        normal = np.array([-direction[1], direction[0]]) / np.linalg.norm(direction)
        if np.dot(np.ones(2) - good[a], normal) < 0:  # orient towards the ideal corner (1, 1)
            normal = -normal
        d = (good - good[a]) @ normal
        i, dist = int(np.argmax(d)), float(d.max())
    row = cand.iloc[i].to_dict()
    reason = f"knee of {names[0]} vs {names[1]} (normalised distance {dist:.3f} from the extremes' line)"
    return Selection(_number(row), bool(row.get("feasible", True)), row, {}, reason)
