"""Driver side of the Ray backend: each finished Tune trial becomes a trial of the Optuna study (ray_runner)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from edgecompress.evaluators.result import EvalResult
from edgecompress.search.objective import (
    active_constraints,
    constraint_values,
    result_attrs,
    trial_dir,
    write_trial_files,
)
from edgecompress.search.ray_artefacts import collect, link_cached, not_found_reason, published
from edgecompress.search.ray_claims import release
from edgecompress.spaces.experiment import ExperimentConfig
from edgecompress.study import attrs as A
from edgecompress.study.record import TrialRecord

METRIC = "val_accuracy"  # what the trainable reports per epoch (ASHA's metric)


class StudyWriter:
    """Driver-side: turn each finished Tune trial (its config and last result) into a trial of the study."""

    def __init__(self, study: optuna.Study, exp: ExperimentConfig, space: Any, folder: Path,
                 on_trial: Callable[[], None]) -> None:
        self.study, self.exp, self.space, self.folder = study, exp, space, folder
        self.bounds = active_constraints(exp.constraints)
        self.distributions = space.distributions()
        self.on_trial = on_trial
        self.board: Any = None  # search.ray_claims: released once a trial is in the study
        self.written: set[str] = set()  # Tune trial ids already in the study
        self.errored: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}  # id -> (config, last result)

    def reported_values(self, result: dict[str, Any]) -> list[float] | None:
        """The objective values of a final report, in objective order (None unless all are there)."""
        values = [result.get(o.name) for o in self.exp.objectives]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            return None
        return [float(v) for v in values]

    def write(self, tune_config: dict[str, Any], last_result: dict[str, Any] | None, trial_id: str,
              error: str | None = None) -> None:
        """Add one Tune trial to the study (once per trial id); `error`: the trial errored (-> FAIL)."""
        if str(trial_id) in self.written:
            return
        self.written.add(str(trial_id))
        params = {k: tune_config[k] for k in self.space.param_names}
        config = self.space.from_params(params)
        result = dict(last_result or {})
        number = len(self.study.get_trials(deepcopy=False))  # the driver is the only writer
        folder = trial_dir(self.folder, number)
        folder.mkdir(parents=True, exist_ok=True)
        attrs: dict[str, Any] = {**TrialRecord.attrs(config=config.to_dict(), config_hash=config.config_hash(),
                                                     artefact_dir=str(folder)), "ray_trial_id": str(trial_id)}
        clamps = self.space.prune_clamps(params)
        if clamps:
            attrs[A.PRUNE_CLAMPED] = clamps
        values, constraints = None, None
        curve = {}
        reported = self.reported_values(result)
        if "ec_cached_from" in result:
            source = self.study.trials[int(result["ec_cached_from"])]
            attrs.update({k: v for k, v in source.user_attrs.items()
                          if k not in A.OWN_WHEN_SERVED | {"ray_trial_id"}})
            attrs.update(TrialRecord.attrs(artefact_dir=str(folder), cached_from=source.number))
            link_cached(source.user_attrs, folder)  # fetched from a URL store if need be
            values, constraints = reported or list(source.values), dict(source.constraints)
            src = TrialRecord.of(source)
            ev = EvalResult(config=config, state=src.state_detail or "complete",  # type: ignore[arg-type]
                            metrics=src.metrics, violations=src.violations)
        elif "ec_result" in result:
            ev = EvalResult.from_dict(result["ec_result"])
            attrs.update(ray_node=result.get("ec_node"), ray_resources=result.get("ec_resources"))
            # from the driver's disk, else from the trial's upload to a URL store (search.ray_artefacts)
            if not collect(result, folder) and ev.state == "complete":  # never COMPLETE without its model
                ev.state, ev.fail_reason = "failed", not_found_reason(result)
            if ev.state in ("complete", "infeasible"):
                if reported is None:
                    ev.state, ev.fail_reason = "failed", "the final report has no objective values"
                else:
                    values = reported
                    constraints = constraint_values(self.bounds, ev.metrics, ev.violations)
        else:  # stopped by ASHA (or errored) before the final report
            ev = EvalResult(config=config, state="pruned")
            if METRIC in result:
                curve = {int(result.get("epoch", 0)): float(result[METRIC])}
        if error is not None and ev.state != "failed":  # OptunaSearch told the mirror FAIL: so does the study
            ev.state, ev.fail_reason, values, constraints = "failed", error, None, None
        if "ec_cached_from" not in result or ev.state == "failed":
            attrs.update(result_attrs(ev, folder))
        state = TrialState.COMPLETE if values is not None else (
            TrialState.FAIL if ev.state == "failed" else TrialState.PRUNED)
        attrs.update(result.get("ec_device") or {})  # ray_gpu_ids, trial_device, device_note
        attrs.update({k: result[f"ec_{k}"] for k in (A.WAITED_FOR, A.CLAIM_NOTE) if f"ec_{k}" in result})
        ev.artefact_dir = str(folder)
        write_trial_files(folder, config, {**ev.to_dict(), "trial": number, "values": values,
                                           A.CACHED_FROM: attrs.get(A.CACHED_FROM)})
        state, attrs = published(self.study.study_name, number, folder, result, state, attrs)
        values, constraints = (values, constraints) if state == TrialState.COMPLETE else (None, None)
        self.study.add_trial(optuna.trial.create_trial(
            state=state, values=values, params=params, distributions=self.distributions,
            user_attrs=attrs, intermediate_values=curve or None, constraints=constraints,
        ))
        release(self.board, config.config_hash(), str(trial_id), state == TrialState.COMPLETE)
        self.on_trial()

    def write_errored(self, grid: Any) -> None:
        """Write the errored trials (kept by the callback) with their error from tuner.fit()'s ResultGrid;
        without a grid (interrupted) with a generic reason."""
        errors: dict[str, str] = {}
        for r in grid if grid is not None else ():
            if r.error is not None:
                tid = str((r.metrics or {}).get("trial_id", ""))
                errors[tid] = _error_line(r.error)
                if tid not in self.errored and r.config is not None:
                    self.errored[tid] = (r.config, r.metrics or {})
        for tid, (config, last) in list(self.errored.items()):
            self.write(config, last, tid, error=errors.get(tid, "Ray trial error (search interrupted)"))


def _error_line(error: BaseException) -> str:
    """One line for fail_reason: the last line of the error's text (a remote error's text is a traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


def study_callback(writer: StudyWriter) -> Any:
    """The Tune callback that hands each finished trial to `writer` (errored ones: after fit(), write_errored)."""
    from ray.tune import Callback

    class _WriteToStudy(Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            writer.write(trial.config, trial.last_result, trial.trial_id)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            # written after fit(), with the error from the ResultGrid (write_errored)
            writer.errored[str(trial.trial_id)] = (dict(trial.config), dict(trial.last_result or {}))
            params = {k: trial.config[k] for k in writer.space.param_names}
            release(writer.board, writer.space.from_params(params).config_hash(), str(trial.trial_id), False)

    return _WriteToStudy()
