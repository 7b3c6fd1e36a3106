"""Run (or resume) an Optuna study for an experiment: one process, or N local worker processes.

`trials` is the total to reach: trials already counted in the study (progress.is_counted) are subtracted.
Each trial is started under a file lock that re-counts the study, so N workers never overshoot the total.
Failed evaluations are FAIL trials (the study goes on); Ctrl-C marks the running trial FAIL
(state_detail "interrupted"), re-queues its params and returns, so running the same command resumes.
Before the study is created or loaded, the real evaluator is set up (`prepare_trial_evaluator`: data
loaded and checked, base model trained if not cached): a data error stops the search there, with one
line and no trial. The study's own set-up (space, experiment hash, create/load, first points, run seeds)
is search/study_setup.py, whose names are importable from here too.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.evaluators import Evaluator
from edgecompress.evaluators.train import ProgressCallback
from edgecompress.search.claim import wait_limit
from edgecompress.search.objective import TrialFailed, make_objective
from edgecompress.search.progress import StudyStats, is_counted, study_stats
from edgecompress.search.recovery import Heartbeat, mark_owner, recover_dead_trials, study_lock
from edgecompress.search.samplers import make_sampler, resolve_sampler_name
from edgecompress.search.study_setup import (
    check_existing_study,
    claim_run_index,
    create_or_load_study,
    enqueue_initial,
    run_seed,
    space_for,
    study_dir,
)
from edgecompress.spaces.experiment import ExperimentConfig
from edgecompress.study import attrs as A
from edgecompress.study.attrs import study_objectives
from edgecompress.study.front import front
from edgecompress.study.record import TrialRecord
from edgecompress.study.storage import check_storage_url, default_storage_url, make_storage
from edgecompress.utils import Locations, runs_dir

ProgressFn = Callable[[StudyStats], None]


@dataclass
class SearchSummary:
    """What a search run did and where the study stands now."""

    study_name: str
    storage: str
    sampler: str
    backend: str
    target: int
    stats: StudyStats
    new_trials: int
    elapsed_s: float
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    front: list[dict[str, Any]] = field(default_factory=list)  # number, values by objective name, config


def _count_started(study: optuna.Study) -> int:
    trials = study.get_trials(deepcopy=False)
    return sum(is_counted(t) or t.state == TrialState.RUNNING for t in trials)


def run_one(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], Any],
            storage: optuna.storages.BaseStorage | None = None) -> None:
    """Evaluate one asked trial and tell its outcome; KeyboardInterrupt re-queues its params and re-raises.
    With `storage` (the study's storage object), an RDB heartbeat is recorded while it runs."""
    with Heartbeat(storage, study, trial.number) if storage is not None else contextlib.nullcontext():
        try:
            values = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except TrialFailed:
            study.tell(trial, state=TrialState.FAIL)
        except KeyboardInterrupt:
            trial.set_user_attr(A.STATE_DETAIL, "interrupted")
            trial.set_user_attr(A.FAIL_REASON, "interrupted (Ctrl-C)")
            study.tell(trial, state=TrialState.FAIL)
            links = TrialRecord.of(trial).links
            study.enqueue_trial(trial.params, user_attrs={**links, **TrialRecord.attrs(retry_of=trial.number)})
            raise
        except Exception as e:  # noqa: BLE001 - a bug outside the evaluator still only fails this trial
            trial.set_user_attr(A.STATE_DETAIL, "failed")
            trial.set_user_attr(A.FAIL_REASON, f"{type(e).__name__}: {e}")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, values)


def run_loop(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    objective: Callable[[optuna.Trial], Any],
    total: int,
    deadline: float | None,
    lock_path: Path,
    on_trial: Callable[[], None] | None = None,
) -> None:
    """Ask/evaluate/tell until the study counts `total` trials (or the deadline passes); `storage` is the
    storage object `study` lives in (heartbeat and crash recovery use it); "count, then ask" runs under
    `study_lock` (PostgreSQL: an advisory lock, so independent workers never overshoot the total)."""
    while deadline is None or time.time() < deadline:
        recover_dead_trials(study, storage)
        with study_lock(storage, study.study_name, lock_path):
            if _count_started(study) >= total:
                return
            exhausted = getattr(study.sampler, "exhausted", None)
            if exhausted is not None and exhausted(study):
                return
            with warnings.catch_warnings():  # heartbeats are recorded by storage.Heartbeat around run_one
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = study.ask()
            mark_owner(storage, study, trial.number)
        run_one(study, trial, objective, storage)
        if on_trial is not None:
            on_trial()


def run_search(
    exp: ExperimentConfig,
    study_name: str,
    storage: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    sampler: str | None = None,
    seed: int | None = None,
    workers: int = 1,
    evaluator: Evaluator | None = None,
    progress: ProgressFn | None = None,
    train_progress: ProgressCallback | None = None,
    artefacts: str | None = None,
) -> SearchSummary:
    """Create or resume `study_name` and run it until it counts `trials` trials (default exp.budget).

    The evaluator is set up first (`prepare_trial_evaluator`; `train_progress` follows base-model training
    when the base is not cached): a DataError there is raised before any study or trial exists.
    The runs folder and the artefact store (`artefacts`, default the runs folder) are resolved to absolute
    paths once here and handed to every worker process."""
    locs = Locations.resolve(artefacts)
    with locs.applied():
        return _run_search(exp, study_name, storage, trials, timeout, sampler, seed, workers, evaluator, progress,
                           train_progress, locs)


def _run_search(
    exp: ExperimentConfig, study_name: str, storage: str | None, trials: int | None, timeout: float | None,
    sampler: str | None, seed: int | None, workers: int, evaluator: Evaluator | None, progress: ProgressFn | None,
    train_progress: ProgressCallback | None, locs: Locations,
) -> SearchSummary:
    if workers < 1:
        raise ConfigError(f"`workers` must be >= 1, got {workers}")
    total = trials if trials is not None else exp.budget.trials
    if total < 1:
        raise ConfigError(f"`trials` must be >= 1, got {total}")
    timeout = timeout if timeout is not None else exp.budget.timeout_s
    seed = exp.seed if seed is None else seed
    space = space_for(exp)
    url = storage or default_storage_url(study_name, workers)
    check_storage_url(url)
    check_existing_study(exp, study_name, url)
    sampler_name = resolve_sampler_name(
        sampler or exp.budget.sampler, len(exp.objectives), total, exp.budget.population, space
    )
    if workers == 1:
        evaluator = prepare_trial_evaluator(exp, evaluator, train_progress)
    elif evaluator is None:  # each worker process builds its own: set up (and cache the base) once here
        _close(prepare_trial_evaluator(exp, None, train_progress))
    try:
        store = make_storage(url)
    except BaseException:
        if workers == 1:
            _close(evaluator)
        raise
    study, fresh = create_or_load_study(exp, study_name, store)
    notes: list[str] = []
    # the grid covers every point of the space, and GridSampler does not count enqueued trials as visited
    if fresh and not study.get_trials(deepcopy=False) and sampler_name != "grid":
        notes += enqueue_initial(study, exp, space)
    if sampler_name == "grid" and space.size() is not None and total > space.size():
        notes.append(f"grid sampler: the space has {space.size()} points; stopping there, not at {total}")
        total = space.size()
    study.set_user_attr(A.SAMPLER, sampler_name)
    started = time.time()
    deadline = started + timeout if timeout else None
    at_start = sum(is_counted(t) for t in study.get_trials(deepcopy=False))
    lock_path = runs_dir() / f"{study_name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # a resumed run must not replay the same random draws, nor may independent workers started at once
    offset = len(study.get_trials(deepcopy=False)) + 100_000 * claim_run_index(study, store, lock_path)

    def report() -> None:
        if progress is not None:
            progress(study_stats(study, total, started, at_start))

    report()
    interrupted = False
    try:
        if workers == 1:
            built, warns = make_sampler(sampler_name, run_seed(sampler_name, seed, offset), total,
                                         exp.budget.population, space)
            notes += warns
            study.sampler = built
            evaluator = evaluator or build_trial_evaluator(exp)
            objective = make_objective(
                space, evaluator, study_dir(study_name), exp.objectives, exp.constraints, cache=True,
                claim_wait_s=wait_limit(exp.finetune.max_seconds), refresh=lambda: recover_dead_trials(study, store),
            )
            try:
                run_loop(study, store, objective, total, deadline, lock_path, on_trial=report)
            finally:
                _close(evaluator)
        else:
            notes += make_sampler(sampler_name, seed, total, exp.budget.population, space)[1]
            _run_workers(exp, study_name, url, total, deadline, sampler_name, run_seed(sampler_name, seed, offset),
                         workers, evaluator, report, locs)
    except KeyboardInterrupt:
        interrupted = True
    report()
    stats = study_stats(study, total, started, at_start)
    return SearchSummary(
        study_name=study_name, storage=url, sampler=sampler_name, backend="optuna", target=total,
        stats=stats, new_trials=stats.finished - at_start, elapsed_s=time.time() - started,
        interrupted=interrupted, warnings=notes, front=front_rows(study),
    )


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """The study's feasible front (edgecompress.study.front): number, values by objective name, config."""
    objs = study_objectives(study)
    rows = []
    for r in front(study, objs, feasible_only=True).to_dict("records"):
        rows.append({"number": int(r["number"]), "values": {o["name"]: float(r[o["name"]]) for o in objs},
                     A.CONFIG: r.get(A.CONFIG) or {}, A.CACHED_FROM: _opt_int(r.get(A.CACHED_FROM))})
    return rows


def _opt_int(v: Any) -> int | None:
    return None if v is None or v != v else int(v)


def prepare_trial_evaluator(exp: ExperimentConfig, evaluator: Evaluator | None = None,
                            on_progress: ProgressCallback | None = None) -> Evaluator:
    """`evaluator` (default: the real one, build_trial_evaluator), set up now, outside any trial: its data
    is loaded and checked and its base model trained when not cached (`on_progress` follows the training).
    A set-up error (DataError for a missing, truncated or corrupt dataset file) closes it and is raised."""
    from edgecompress.evaluators.evaluator import prepare_evaluator

    evaluator = evaluator or build_trial_evaluator(exp)
    try:
        prepare_evaluator(evaluator, on_progress)
    except BaseException:
        _close(evaluator)
        raise
    return evaluator


def build_trial_evaluator(exp: ExperimentConfig) -> Evaluator:
    """The real evaluator; with budget.isolation "process" it runs each trial in a worker process, so a
    native crash or hang fails that trial only, and finetune.max_seconds is enforced by a kill."""
    from edgecompress.evaluators.evaluator import build_evaluator

    if exp.budget.isolation == "none":
        return build_evaluator(exp)
    from edgecompress.evaluators.isolated import IsolatedEvaluator

    return IsolatedEvaluator(functools.partial(build_evaluator, exp), max_seconds=exp.finetune.max_seconds)


# ---- local worker processes -----------------------------------------------------------------------
def _worker_main(
    exp_dict: dict[str, Any], study_name: str, url: str, total: int, deadline: float | None,
    sampler_name: str, seed: int, evaluator: Evaluator | None, locs: Locations | None = None,
) -> None:
    """One worker process: load the study, run the shared ask/tell loop (in the driver's `locs`)."""
    if locs is not None:
        locs.apply()
    exp = ExperimentConfig(**exp_dict)
    space = space_for(exp)
    store = make_storage(url)
    study, _ = create_or_load_study(exp, study_name, store)
    study.sampler = make_sampler(sampler_name, seed, total, exp.budget.population, space)[0]
    evaluator = evaluator or build_trial_evaluator(exp)
    objective = make_objective(space, evaluator, study_dir(study_name), exp.objectives, exp.constraints,
                               claim_wait_s=wait_limit(exp.finetune.max_seconds),
                               refresh=lambda: recover_dead_trials(study, store))
    try:
        run_loop(study, store, objective, total, deadline, runs_dir() / f"{study_name}.lock")
    except KeyboardInterrupt:
        pass
    finally:
        _close(evaluator)


def _close(evaluator: Any) -> None:
    """Stop an evaluator's worker process, if it has one."""
    close = getattr(evaluator, "close", None)
    if callable(close):
        close()



def _run_workers(
    exp: ExperimentConfig, study_name: str, url: str, total: int, deadline: float | None, sampler_name: str,
    seed: int, workers: int, evaluator: Evaluator | None, report: Callable[[], None], locs: Locations | None = None,
) -> None:
    """Start `workers` processes on the same study and report progress until they all exit.

    The real evaluator is built in each process (spawn); an evaluator object passed in is inherited
    through fork (tests), since it need not be importable by name.
    """
    ctx = mp.get_context("fork" if evaluator is not None and os.name == "posix" else "spawn")
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(exp.to_dict(), study_name, url, total, deadline, sampler_name,
                  run_seed(sampler_name, seed, 1000 * i), evaluator, locs),
            name=f"edgecompress-worker-{i}",
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=1.0 / workers)
            report()
    except KeyboardInterrupt:
        for p in procs:  # they got SIGINT too: give them time to record their trial
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        raise
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        raise EdgeCompressError(f"{len(bad)} worker process(es) exited with codes {bad}; see their output above")
