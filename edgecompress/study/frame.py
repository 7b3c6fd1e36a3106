"""Study -> pandas DataFrame (one row per trial), the feasibility rule and trial counts.

Columns of `study_to_frame` (documented contract for the CLI, report and export):
    number, state (Optuna state name), state_detail ("complete"|"infeasible"|"failed"|"pruned"|...),
    feasible (COMPLETE and no violation), total_violation (sum of positive violations),
    <objective name> for each objective (from trial.values; user attr of that name when values are absent),
    fail_reason, latency_source, device, fidelity ("proxy" for search trials, "final" after finalize),
    params_<name>      the sampler's raw params (same prefix as Optuna's trials_dataframe),
    cfg_<key>          the CompressionConfig dict flattened (lists become tuples),
    <metric>           every other trial user attr, flat under its own key,
    violation_<name>   each constraint's violation (>0 violated),
    config_hash, artefact_dir, datetime_start, datetime_complete, duration_s, config (the dict).
`df.attrs` holds study_name, objectives (list of {"name", "direction"}) and constraints.
Violations: the union of Optuna's stored constraints (trial.set_constraint) and the "violations" user
attr, the user attr winning for a key present in both.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from edgecompress.study import attrs as A
from edgecompress.study.attrs import study_objectives
from edgecompress.study.constraints import satisfied
from edgecompress.study.record import TrialRecord

PARAM_PREFIX = "params_"
CONFIG_PREFIX = "cfg_"
VIOLATION_PREFIX = "violation_"
_RESERVED = {A.CONFIG, A.CONFIG_HASH, A.STATE_DETAIL, A.FAIL_REASON, A.VIOLATIONS, A.ARTEFACT_DIR, A.FIDELITY}
_STATE_DETAIL = {
    TrialState.COMPLETE: "complete",
    TrialState.FAIL: "failed",
    TrialState.PRUNED: "pruned",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def _violations(trial: FrozenTrial) -> dict[str, float]:
    """Optuna's stored constraints, overridden key by key by the "violations" user attr."""
    out: dict[str, float] = {}
    for raw in (trial.constraints, TrialRecord.of(trial).violations):
        if not isinstance(raw, dict):
            continue
        for k, v in raw.items():
            try:
                out[str(k)] = float(v)
            except (TypeError, ValueError):
                continue
    return out


class Feasibility(NamedTuple):
    """The one feasibility rule: COMPLETE, not marked infeasible, and no constraint violated (> 0)."""

    feasible: bool
    state_detail: str
    total_violation: float
    violations: dict[str, float]


def trial_feasibility(trial: FrozenTrial) -> Feasibility:
    """Feasibility of a trial from its state, state_detail and stored constraints / violations."""
    viol = _violations(trial)
    total = float(sum(max(0.0, v) for v in viol.values() if not math.isnan(v)))
    detail = TrialRecord.of(trial).state_detail or _STATE_DETAIL.get(trial.state, trial.state.name.lower())
    if trial.state == TrialState.COMPLETE and total > 0 and detail == "complete":
        detail = "infeasible"
    feasible = trial.state == TrialState.COMPLETE and satisfied(viol) and detail != "infeasible"
    return Feasibility(bool(feasible), str(detail), total, viol)


def trial_row(trial: FrozenTrial, objectives: list[dict[str, str]]) -> dict[str, Any]:
    """One frame row for one trial (see the module docstring for the columns)."""
    ua = trial.user_attrs
    rec = TrialRecord(ua)
    feasible, detail, total, viol = trial_feasibility(trial)
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        A.STATE_DETAIL: detail,
        "feasible": bool(feasible),
        "total_violation": total,
    }
    values = trial.values if trial.values is not None and len(trial.values) == len(objectives) else None
    for i, obj in enumerate(objectives):
        v = values[i] if values is not None else ua.get(obj["name"])
        row[obj["name"]] = float(v) if isinstance(v, (int, float)) else math.nan
    row[A.FAIL_REASON] = ua.get(A.FAIL_REASON)
    row[A.LATENCY_SOURCE] = ua.get(A.LATENCY_SOURCE)
    row["device"] = ua.get("device")
    row[A.FIDELITY] = rec.fidelity
    for k, v in trial.params.items():
        row[PARAM_PREFIX + k] = _hashable(v)
    config = rec.config
    if config is not None:
        for k, v in config.items():
            row[CONFIG_PREFIX + k] = _hashable(v)
    for k, v in ua.items():
        if k in _RESERVED or k in row:
            continue
        row[k] = _hashable(v)
    for k, v in viol.items():
        row[VIOLATION_PREFIX + k] = v
    row[A.CONFIG_HASH] = ua.get(A.CONFIG_HASH)
    row[A.ARTEFACT_DIR] = ua.get(A.ARTEFACT_DIR)
    row["datetime_start"] = trial.datetime_start
    row["datetime_complete"] = trial.datetime_complete
    dur = trial.duration
    row["duration_s"] = dur.total_seconds() if dur is not None else math.nan
    row[A.CONFIG] = config
    return row


def study_to_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial of `study`, any state; objectives as columns named by metric."""
    objectives = study_objectives(study)
    rows = [trial_row(t, objectives) for t in study.get_trials(deepcopy=False)]
    base = ["number", "state", A.STATE_DETAIL, "feasible", "total_violation"]
    base += [o["name"] for o in objectives] + [A.FAIL_REASON, A.LATENCY_SOURCE, "device"]
    df = pd.DataFrame(rows)
    for col in base:
        if col not in df.columns:
            df[col] = pd.Series(dtype=object if col in ("state", A.STATE_DETAIL) else float)
    if len(df):
        df = df.sort_values("number", kind="stable").reset_index(drop=True)
    df.attrs["study_name"] = study.study_name
    df.attrs["objectives"] = objectives
    df.attrs["constraints"] = {
        k: v for k, v in (study.user_attrs.get(A.CONSTRAINTS_ATTR) or {}).items() if v is not None
    }
    return df


def frame_objectives(df: pd.DataFrame, objectives: Any = None) -> list[dict[str, str]]:
    """Resolve objectives for a frame: explicit list (names, (name, dir) pairs or dicts) or df.attrs."""
    if objectives is None:
        objectives = df.attrs.get("objectives")
        if not objectives:
            raise ValueError("objectives: not given and the frame has no attrs['objectives']")
    declared = {o["name"]: o["direction"] for o in df.attrs.get("objectives") or []}
    out: list[dict[str, str]] = []
    for o in objectives:
        if isinstance(o, dict):
            name, direction = str(o["name"]), str(o.get("direction") or declared.get(o["name"], ""))
        elif isinstance(o, (tuple, list)):
            name, direction = str(o[0]), str(o[1])
        else:
            name, direction = str(o), declared.get(str(o), _guess_direction(str(o)))
        direction = direction.lower()
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"objectives: direction of {name!r} must be 'maximize' or 'minimize'")
        if name not in df.columns:
            cols = ", ".join(map(str, df.columns))
            raise ValueError(f"objectives: no column {name!r} in the frame (columns: {cols})")
        out.append({"name": name, "direction": direction})
    return out


def _guess_direction(name: str) -> str:
    return "maximize" if "accuracy" in name else "minimize"


def as_frame(study_or_frame: Any, storage: Any = None) -> pd.DataFrame:
    """A trial frame from a frame (returned as is), an optuna.Study, or a study name / URL / path."""
    if isinstance(study_or_frame, pd.DataFrame):
        return study_or_frame
    from edgecompress.study.storage import load_study

    return study_to_frame(load_study(study_or_frame, storage))


def counts(df: pd.DataFrame) -> dict[str, int]:
    """Trials of a frame by outcome: total, complete, feasible, infeasible, failed, pruned, running."""
    state = df["state"] if "state" in df else pd.Series([], dtype=object)
    complete = state == "COMPLETE"
    feasible = df["feasible"].astype(bool) if "feasible" in df else complete
    return {
        "total": len(df),
        "complete": int(complete.sum()),
        "feasible": int((complete & feasible).sum()),
        "infeasible": int((complete & ~feasible).sum()),
        "failed": int((state == "FAIL").sum()),
        "pruned": int((state == "PRUNED").sum()),
        "running": int(state.isin(["RUNNING", "WAITING"]).sum()),
    }
