"""The Optuna objective: trial -> CompressionConfig -> evaluation -> objective values + user attributes.

Trial user attrs (the contract the results package reads): every metric of EvalResult.metrics flat by its
key, "config", "config_hash", "state_detail" (EvalResult.state, or "interrupted"), "fail_reason" (failed
trials), "violations", "artefact_dir", "cached_from" (trial number, when served from the config cache), "waited_for"
and "claim_note" (search.claim: the RUNNING trial with the same config this one waited for, and why it
trained after all) and "val_accuracy_curve" (per-epoch validation accuracy, when the evaluator reported it).
Constraints are recorded with `trial.set_constraint` (Optuna 5; <= 0 feasible) for every configured one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators import Evaluator
from edgecompress.evaluators.result import ARTEFACT_FILES, EvalResult
from edgecompress.search.claim import claim_config
from edgecompress.spaces.config import CompressionConfig
from edgecompress.spaces.space import SearchSpace
from edgecompress.study import artefact_store
from edgecompress.study import attrs as A
from edgecompress.study.constraints import active_constraints, constraint_values
from edgecompress.study.record import TrialRecord
from edgecompress.utils import atomic_write_json, atomic_write_text, is_finite_number, plain


class TrialFailed(EdgeCompressError):
    """The evaluation of a trial failed (NaN loss, OOM, exception); the study records FAIL and goes on."""


def objective_values(
    objectives: Sequence[Any], metrics: dict[str, Any], state: str
) -> tuple[float, ...]:
    """Objective values in order; an infeasible trial without accuracy scores 0 for it (worst possible)."""
    values = []
    for obj in objectives:
        name, direction = _obj(obj)
        v = metrics.get(name)
        if v is None and state == "infeasible" and direction == "maximize" and name == "accuracy":
            v = 0.0
        if not is_finite_number(v):
            raise TrialFailed(f"objective {name!r} is missing or not finite ({v!r}) in the evaluation result")
        values.append(float(v))
    return tuple(values)


def _obj(obj: Any) -> tuple[str, str]:
    if isinstance(obj, dict):
        return obj["name"], obj["direction"]
    return obj.name, obj.direction


def trial_dir(study_dir: Path, number: int) -> Path:
    return Path(study_dir) / "trials" / str(number)


CLAIM_WAIT_S = 3600.0 + 60.0  # default finetune.max_seconds + the isolated evaluator's kill grace


def artefacts_usable(t: FrozenTrial) -> bool:
    """Whether this worker can read a trial's artefacts: its folder is readable here, or they were uploaded to
    a URL artefact store (another worker's own disk is not readable: --artefacts, shared, avoids that)."""
    return artefact_store.available(t.user_attrs)


def find_cached(study: optuna.Study, config_hash: str, exclude: int | None = None) -> FrozenTrial | None:
    """The first COMPLETE trial of `study` whose config has this hash."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if TrialRecord.of(t).config_hash == config_hash and t.number != exclude:
            return t
    return None


DIED_PREFIXES = ("process died", "timed out")
MAX_DEATHS = 2  # a config whose process died (or was killed) this often is not evaluated again


def deaths_of(study: optuna.Study, config_hash: str, exclude: int | None = None) -> list[int]:
    """Numbers of FAIL trials of this config whose worker process died or was killed for time."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if TrialRecord.of(t).config_hash == config_hash and t.number != exclude
            and (TrialRecord.of(t).fail_reason or "").startswith(DIED_PREFIXES)]


def write_trial_files(folder: Path, config: CompressionConfig, record: dict[str, Any]) -> None:
    """config.yaml and metrics.json of one trial, written atomically."""
    atomic_write_text(folder / ARTEFACT_FILES["config"], config.to_yaml())
    atomic_write_json(folder / ARTEFACT_FILES["metrics"], record)


def same_store(src: Path, dst: Path) -> bool:
    """Whether two trial folders are in one artefact store (<store>/<study>/trials/<n>): hard links are
    safe there; a folder of another worker's own store is copied from instead (it may be cleaned up)."""
    a, b = Path(src).absolute().parents, Path(dst).absolute().parents
    return len(a) > 2 and len(b) > 2 and a[2] == b[2]


def link_artefacts(src: Path, dst: Path, link: bool = True) -> None:
    """Hard-link (`link`, same store) or copy the weights and logits of a cached trial into another trial's
    folder."""
    dst.mkdir(parents=True, exist_ok=True)
    for key, name in ARTEFACT_FILES.items():
        if key in ("config", "metrics") or not (src / name).is_file():
            continue
        target = dst / name
        if target.exists():
            target.unlink()
        try:
            if not link:
                raise OSError("copy")
            os.link(src / name, target)
        except OSError:
            shutil.copy2(src / name, target)


def result_attrs(result: EvalResult, artefact_dir: Path) -> dict[str, Any]:
    """User attrs describing an evaluation (metrics flat, then the bookkeeping keys)."""
    attrs: dict[str, Any] = {k: plain(v, keep_nonfinite=True) for k, v in result.metrics.items()}
    attrs.update(TrialRecord.attrs(
        config=result.config.to_dict(),
        config_hash=result.config.config_hash(),
        state_detail=result.state,
        violations={k: float(v) for k, v in result.violations.items()},
        artefact_dir=str(artefact_dir),
    ))
    if result.state == "failed":
        attrs[A.FAIL_REASON] = result.fail_reason or "evaluation failed"
    return attrs


def make_objective(
    space: SearchSpace,
    evaluator: Evaluator,
    study_dir: str | os.PathLike[str],
    objectives: Sequence[Any],
    constraints: Any = None,
    cache: bool = True,
    claim_wait_s: float = CLAIM_WAIT_S,
    refresh: Callable[[], object] | None = None,
) -> Callable[[optuna.Trial], tuple[float, ...]]:
    """Objective for `study.optimize` or an ask/tell loop.

    Returns the objective values in `objectives` order. Raises TrialFailed (trial must be FAIL; attrs are
    already set) or optuna.TrialPruned. Artefacts go to `study_dir`/trials/<number>/.
    With `cache`, a config another trial evaluated (or is evaluating: search.claim, waiting at most
    `claim_wait_s`, running `refresh` (dead-trial recovery) between looks) is served from that trial.
    """
    study_dir = Path(study_dir)
    bounds = active_constraints(constraints)

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        config = space.suggest(trial)
        clamps = space.prune_clamps(trial.params)
        if clamps:  # a ratio that would have emptied a layer: the trial evaluates the largest one that does not
            trial.set_user_attr(A.PRUNE_CLAMPED, clamps)
        folder = trial_dir(study_dir, trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        TrialRecord.write(trial, config=config.to_dict(), config_hash=config.config_hash(), artefact_dir=str(folder))

        source = None
        if cache:  # served from a COMPLETE twin, or after waiting for a RUNNING one (search.claim)
            claim = claim_config(trial.study, trial.number, config.config_hash(), wait_s=claim_wait_s,
                                 usable=artefacts_usable, refresh=refresh)
            source = claim.source
            if claim.waited_for is not None:
                trial.set_user_attr(A.WAITED_FOR, claim.waited_for)
            if claim.note:
                trial.set_user_attr(A.CLAIM_NOTE, claim.note)
        if source is not None:
            return _serve_from_cache(trial, source, config, folder, bounds)
        died = deaths_of(trial.study, config.config_hash(), exclude=trial.number)
        if len(died) >= MAX_DEATHS:
            reason = (f"not retried: this config's process died or timed out {len(died)} times "
                      f"(trials {', '.join(map(str, died))})")
            return _record(trial, EvalResult(config=config, state="failed", fail_reason=reason), config, folder,
                           objectives, bounds)

        curve: list[float] = []
        single = len(trial.study.directions) == 1

        def on_epoch(epoch: int, val_accuracy: float) -> None:
            curve.append(float(val_accuracy))
            if single:  # Optuna pruners only support single-objective studies
                trial.report(float(val_accuracy), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        try:
            result = evaluator(config, artefact_dir=folder, on_epoch=on_epoch)
        except optuna.TrialPruned:
            result = EvalResult(config=config, state="pruned")
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - failures are data: record and go on
            result = EvalResult(config=config, state="failed", fail_reason=f"{type(e).__name__}: {e}")
        if curve:
            TrialRecord.write(trial, val_curve=curve)
        return _record(trial, result, config, folder, objectives, bounds)

    return objective


def _record(
    trial: optuna.Trial,
    result: EvalResult,
    config: CompressionConfig,
    folder: Path,
    objectives: Sequence[Any],
    bounds: dict[str, float],
) -> tuple[float, ...]:
    result.config = config
    result.artefact_dir = str(folder)
    values: tuple[float, ...] | None = None
    if result.state in ("complete", "infeasible"):
        try:
            values = objective_values(objectives, result.metrics, result.state)
        except TrialFailed as e:
            result.state, result.fail_reason = "failed", str(e)
    for key, value in result_attrs(result, folder).items():
        trial.set_user_attr(key, value)
    record = {**result.to_dict(), "trial": trial.number, "values": list(values) if values else None}
    write_trial_files(folder, config, record)
    store = artefact_store.store_url()
    if store and values is not None:  # a URL store: upload, and record where (study.artefact_store)
        try:
            uri = artefact_store.upload(folder, artefact_store.trial_uri(store, trial.study.study_name, trial.number))
            trial.set_user_attr(A.ARTEFACT_URI, uri)
        except EdgeCompressError as e:
            trial.set_user_attr(A.STATE_DETAIL, "failed")
            trial.set_user_attr(A.FAIL_REASON, str(e))
            raise TrialFailed(str(e)) from None
    if result.state == "pruned":
        raise optuna.TrialPruned(result.fail_reason or "pruned")
    if result.state == "failed" or values is None:
        raise TrialFailed(result.fail_reason or "evaluation failed")
    for name, v in constraint_values(bounds, result.metrics, result.violations).items():
        trial.set_constraint(name, v)
    return values


def _serve_from_cache(
    trial: optuna.Trial, source: FrozenTrial, config: CompressionConfig, folder: Path, bounds: dict[str, float]
) -> tuple[float, ...]:
    """Copy the values, attrs and artefacts of an identical, already evaluated config."""
    for key, value in source.user_attrs.items():
        if key not in A.OWN_WHEN_SERVED | {A.CACHED_FROM, A.ARTEFACT_URI}:
            trial.set_user_attr(key, value)
    TrialRecord.write(trial, artefact_dir=str(folder), cached_from=source.number)
    src_dir = artefact_store.local_folder(source.user_attrs)  # fetched from a URL store when not readable here
    if src_dir is not None:
        link_artefacts(src_dir, folder, link=same_store(src_dir, folder))
    src = TrialRecord.of(source)
    metrics = src.metrics
    ev = EvalResult(config=config, state=src.state_detail or "complete", metrics=metrics,  # type: ignore[arg-type]
                    violations=src.violations, artefact_dir=str(folder))
    record = {**ev.to_dict(), "trial": trial.number, A.CACHED_FROM: source.number, "values": list(source.values)}
    write_trial_files(folder, config, record)
    store = artefact_store.store_url()
    if store:  # the source's upload serves this trial too; an old source without one is uploaded now
        uri = source.user_attrs.get(A.ARTEFACT_URI) or artefact_store.upload(
            folder, artefact_store.trial_uri(store, trial.study.study_name, trial.number))
        trial.set_user_attr(A.ARTEFACT_URI, uri)
    for name, v in source.constraints.items():
        trial.set_constraint(name, v)
    if not source.constraints:  # constraints configured after the source ran
        for name, v in constraint_values(bounds, metrics, ev.violations).items():
            trial.set_constraint(name, v)
    return tuple(source.values)
