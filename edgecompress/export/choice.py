"""Which trial of a study to export: trial N, the knee of the front, or the front's best under budgets; and where
its saved model is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.results.pareto import Selection, knee_point, select
from edgecompress.study import artefact_store
from edgecompress.study import attrs as A
from edgecompress.study.front import front


def choose_trial(df: Any, trial: int | None = None, max_latency: float | None = None,
                 min_accuracy: float | None = None, knee: bool = False, deployable: bool = False) -> Selection:
    """The trial to export: `trial` N, the knee of the front, or `select` over the front by the budgets.

    With `trial` or `knee`, budgets are checked against the chosen point (not used to choose). `deployable`:
    the front of the trials whose latency was measured (never an estimated one; `trial` N must be one).
    """
    if trial is not None and knee:
        raise ConfigError("export: give either `trial` or `knee`, not both")
    if trial is None and not knee and max_latency is None and min_accuracy is None:
        raise ConfigError("export: choose a trial with `trial` N, `max_latency` X, `min_accuracy` Y or `knee`")
    if trial is not None:
        rows = df[df["number"] == trial]
        if not len(rows):
            raise EdgeCompressError(f"export: study {df.attrs.get('study_name')!r} has no trial {trial}")
        row = rows.iloc[0]
        if row["state"] != "COMPLETE":
            why = row.get(A.FAIL_REASON) or row.get(A.STATE_DETAIL)
            raise EdgeCompressError(f"export: trial {trial} is {row['state']} ({why}); only complete trials export")
        if deployable and row.get(A.LATENCY_SOURCE) == "estimated":
            raise ConfigError(f"export (`deployable`): trial {trial}'s latency is estimated (no kernels here), not "
                              "measured; drop `deployable` to export it anyway")
        one = rows.copy()
        one.attrs = dict(df.attrs)
        sel = select(one, max_latency=max_latency, min_accuracy=min_accuracy)
        return Selection(sel.number, sel.feasible, sel.row, sel.violations,
                         f"trial {trial}" + ("" if sel.feasible else f": {sel.reason}"))
    rows = front(df, deployable=deployable)
    if rows.empty:
        what = "deployable (measured-latency) " if deployable else ""
        raise EdgeCompressError(f"export: study {df.attrs.get('study_name')!r} has no complete {what}trial")
    if knee:
        sel = knee_point(rows)
        if max_latency is None and min_accuracy is None:
            return sel
        one = rows[rows["number"] == sel.number]
        chk = select(one, max_latency=max_latency, min_accuracy=min_accuracy)
        return Selection(sel.number, chk.feasible, sel.row, chk.violations,
                         sel.reason + ("" if chk.feasible else f"; {chk.reason}"))
    return select(rows, max_latency=max_latency, min_accuracy=min_accuracy)


def trial_model_path(row: Any, number: int | None) -> Path:
    """model.pt of a trial's artefacts, or a one-line error saying why there is none."""
    folder = row.get(A.ARTEFACT_DIR) if hasattr(row, "get") else None
    if not isinstance(folder, str) or not folder:
        raise EdgeCompressError(f"trial {number} has no {A.ARTEFACT_DIR}: nothing to export")
    local = artefact_store.local_folder(row)  # not readable here: fetched from the artefact store's upload
    path = (local or Path(folder)) / ARTEFACT_FILES["model"]
    if not path.is_file():
        raise EdgeCompressError(f"trial {number}: no saved model at {path} (stopped before fine-tuning, "
                                "or its artefacts were moved)")
    return path
