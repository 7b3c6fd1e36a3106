"""Study -> pandas DataFrame (one row per trial) and loading a study by name, path or storage URL.

Columns of `study_to_frame` (documented contract for the CLI, report and export):
    number, state (Optuna state name), state_detail ("complete"|"infeasible"|"failed"|"pruned"|...),
    feasible (COMPLETE and no violation), total_violation (sum of positive violations),
    <objective name> for each objective (from trial.values; user attr of that name when values are absent),
    fail_reason, latency_source, device,
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
import os
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from edgecompress.errors import EdgeCompressError
from edgecompress.utils import runs_dir

PARAM_PREFIX = "params_"
CONFIG_PREFIX = "cfg_"
VIOLATION_PREFIX = "violation_"
JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")  # as search/storage.py
_RESERVED = {"config", "config_hash", "state_detail", "fail_reason", "violations", "artefact_dir"}
_STATE_DETAIL = {
    TrialState.COMPLETE: "complete",
    TrialState.FAIL: "failed",
    TrialState.PRUNED: "pruned",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def study_objectives(study: optuna.Study) -> list[dict[str, str]]:
    """Objectives as [{"name", "direction"}] in trial.values order (user attr, else Optuna's names)."""
    directions = [d.name.lower() for d in study.directions]
    declared = study.user_attrs.get("objectives")
    if declared:
        out = [{"name": str(o["name"]), "direction": str(o["direction"]).lower()} for o in declared]
        if len(out) == len(directions):
            return out
    names = study.metric_names or [f"value_{i}" for i in range(len(directions))]
    return [{"name": n, "direction": d} for n, d in zip(names, directions, strict=False)]


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def _violations(trial: FrozenTrial) -> dict[str, float]:
    """Optuna's stored constraints, overridden key by key by the "violations" user attr."""
    out: dict[str, float] = {}
    for raw in (trial.constraints, trial.user_attrs.get("violations")):
        if not isinstance(raw, dict):
            continue
        for k, v in raw.items():
            try:
                out[str(k)] = float(v)
            except (TypeError, ValueError):
                continue
    return out


def trial_row(trial: FrozenTrial, objectives: list[dict[str, str]]) -> dict[str, Any]:
    """One frame row for one trial (see the module docstring for the columns)."""
    ua = trial.user_attrs
    viol = _violations(trial)
    total = float(sum(max(0.0, v) for v in viol.values() if not math.isnan(v)))
    detail = ua.get("state_detail") or _STATE_DETAIL.get(trial.state, trial.state.name.lower())
    if trial.state == TrialState.COMPLETE and total > 0 and detail == "complete":
        detail = "infeasible"
    feasible = trial.state == TrialState.COMPLETE and total <= 0 and detail != "infeasible"
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "state_detail": detail,
        "feasible": bool(feasible),
        "total_violation": total,
    }
    values = trial.values if trial.values is not None and len(trial.values) == len(objectives) else None
    for i, obj in enumerate(objectives):
        v = values[i] if values is not None else ua.get(obj["name"])
        row[obj["name"]] = float(v) if isinstance(v, (int, float)) else math.nan
    row["fail_reason"] = ua.get("fail_reason")
    row["latency_source"] = ua.get("latency_source")
    row["device"] = ua.get("device")
    for k, v in trial.params.items():
        row[PARAM_PREFIX + k] = _hashable(v)
    config = ua.get("config")
    if isinstance(config, dict):
        for k, v in config.items():
            row[CONFIG_PREFIX + k] = _hashable(v)
    for k, v in ua.items():
        if k in _RESERVED or k in row:
            continue
        row[k] = _hashable(v)
    for k, v in viol.items():
        row[VIOLATION_PREFIX + k] = v
    row["config_hash"] = ua.get("config_hash")
    row["artefact_dir"] = ua.get("artefact_dir")
    row["datetime_start"] = trial.datetime_start
    row["datetime_complete"] = trial.datetime_complete
    dur = trial.duration
    row["duration_s"] = dur.total_seconds() if dur is not None else math.nan
    row["config"] = config if isinstance(config, dict) else None
    return row


def study_to_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial of `study`, any state; objectives as columns named by metric."""
    objectives = study_objectives(study)
    rows = [trial_row(t, objectives) for t in study.get_trials(deepcopy=False)]
    base = ["number", "state", "state_detail", "feasible", "total_violation"]
    base += [o["name"] for o in objectives] + ["fail_reason", "latency_source", "device"]
    df = pd.DataFrame(rows)
    for col in base:
        if col not in df.columns:
            df[col] = pd.Series(dtype=object if col in ("state", "state_detail") else float)
    if len(df):
        df = df.sort_values("number", kind="stable").reset_index(drop=True)
    df.attrs["study_name"] = study.study_name
    df.attrs["objectives"] = objectives
    df.attrs["constraints"] = {
        k: v for k, v in (study.user_attrs.get("constraints") or {}).items() if v is not None
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


# ---- loading --------------------------------------------------------------------------------------


def _list_studies(storage: Any) -> list[str]:
    try:
        return sorted(optuna.get_all_study_names(storage))
    except Exception:  # noqa: BLE001 - listing is best effort inside an error message
        return []


def _journal(path: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def _storage_for_path(path: Path) -> Any:
    if path.suffix in JOURNAL_SUFFIXES:
        return _journal(path)
    return f"sqlite:///{path}"


def _local_studies() -> list[str]:
    root = runs_dir()
    if not root.is_dir():
        return []
    return sorted(p.stem for p in root.iterdir() if p.suffix in (".db", *JOURNAL_SUFFIXES))


def load_study(name_or_url: str | os.PathLike[str] | optuna.Study, storage: Any = None) -> optuna.Study:
    """Open a stored study.

    A bare name maps to <runs_dir()>/<name>.journal when it exists, else sqlite:///<runs_dir()>/<name>.db
    (search/storage.py's default); a storage URL (`sqlite:///x.db`, `postgresql://...`,
    `journal:path`) or a .db/.journal path opens the only study there; with `storage` given,
    `name_or_url` is the study name in it (a URL/path string or an Optuna storage object).
    """
    if isinstance(name_or_url, optuna.Study):
        return name_or_url
    text = str(name_or_url)
    study_name: str | None
    where: str
    if storage is not None:
        store = storage
        if isinstance(storage, str) and storage.startswith("journal:"):
            store = _journal(Path(storage.removeprefix("journal://").removeprefix("journal:")))
        elif isinstance(storage, str) and "://" not in storage:
            store = _storage_for_path(Path(storage))
        study_name, where = text, str(storage)
    elif text.startswith("journal:"):
        path = Path(text.removeprefix("journal://").removeprefix("journal:"))
        if not path.exists():
            raise EdgeCompressError(f"no study storage at {text}: {path} does not exist")
        study_name, store, where = None, _journal(path), text
    elif "://" in text:
        study_name, store, where = None, text, text
        if text.startswith("sqlite:///") and text != "sqlite:///:memory:":
            db = Path(text[len("sqlite:///") :])
            if not db.exists():
                raise EdgeCompressError(f"no study storage at {text}: {db} does not exist")
    elif text.endswith((".db", *JOURNAL_SUFFIXES)) or os.sep in text:
        path = Path(text)
        if not path.exists():
            raise EdgeCompressError(f"no study storage at {path}: the file does not exist")
        study_name, store, where = None, _storage_for_path(path), str(path)
    else:
        root = runs_dir()
        candidates = [root / f"{text}.journal", root / f"{text}.db"]
        candidates += [root / f"{text}{s}" for s in JOURNAL_SUFFIXES[1:]]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            known = _local_studies()
            listing = ", ".join(known) if known else "none"
            raise EdgeCompressError(
                f"study {text!r} not found: no {candidates[1]} or {candidates[0].name} "
                f"(studies in {root}: {listing})"
            )
        study_name, store, where = text, _storage_for_path(found), str(found)
    names = _list_studies(store)
    if study_name is not None and storage is None and study_name not in names and len(names) == 1:
        study_name = names[0]  # runs/<name>.db holding one study under another name
    if study_name is None:
        if len(names) == 1:
            study_name = names[0]
        elif not names:
            raise EdgeCompressError(f"no studies in {where}")
        else:
            raise EdgeCompressError(
                f"{where} holds several studies ({', '.join(names)}): "
                "name one, e.g. load_study(NAME, storage=...)"
            )
    try:
        return optuna.load_study(study_name=study_name, storage=store)
    except KeyError:
        listing = ", ".join(names) if names else "none"
        raise EdgeCompressError(
            f"study {study_name!r} not found in {where} (studies there: {listing})"
        ) from None
