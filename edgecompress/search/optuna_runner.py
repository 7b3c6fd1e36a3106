"""Run (or resume) an Optuna study for an experiment: one process, or N local worker processes.

`trials` is the total to reach: trials already counted in the study (progress.is_counted) are subtracted.
Each trial is started under a file lock that re-counts the study, so N workers never overshoot the total.
Failed evaluations are FAIL trials (the study goes on); Ctrl-C marks the running trial FAIL
(state_detail "interrupted"), re-queues its params and returns, so running the same command resumes.
"""

from __future__ import annotations

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
from filelock import FileLock
from optuna.trial import TrialState

from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.search.objective import Evaluator, TrialFailed, make_objective
from edgecompress.search.progress import StudyStats, is_counted, pareto_front, study_stats
from edgecompress.search.samplers import make_sampler, resolve_sampler_name
from edgecompress.search.storage import Heartbeat, default_storage_url, make_storage, mark_owner, recover_dead_trials
from edgecompress.spaces.config import CompressionConfig
from edgecompress.spaces.experiment import ExperimentConfig
from edgecompress.spaces.space import SearchSpace
from edgecompress.utils import runs_dir

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


def space_for(exp: ExperimentConfig) -> SearchSpace:
    """SearchSpace of an experiment: the stage structure comes from building the model (no weights)."""
    from edgecompress.evaluators.compress import stage_blocks
    from edgecompress.evaluators.models import create_model

    model = create_model(exp.model.name, num_classes=10, in_chans=3, **exp.model.kwargs)
    blocks = stage_blocks(model)  # droppable structure (mobilenet_v2: 11, not its 19 modules)
    return SearchSpace.from_config(exp.space, len(blocks), blocks)


def study_dir(study_name: str) -> Path:
    return runs_dir() / study_name


def objectives_attr(exp: ExperimentConfig) -> list[dict[str, str]]:
    return [{"name": o.name, "direction": o.direction} for o in exp.objectives]


def create_or_load_study(
    exp: ExperimentConfig, study_name: str, storage: optuna.storages.BaseStorage,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> tuple[optuna.Study, bool]:
    """The study (created with the experiment's objectives, or loaded); returns (study, fresh)."""
    directions = [o.direction for o in exp.objectives]
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5) if len(directions) == 1 else optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=study_name, storage=storage, sampler=sampler, pruner=pruner, directions=directions,
        load_if_exists=True,
    )
    stored = study.user_attrs.get("objectives")
    if stored is not None and stored != objectives_attr(exp):
        raise ConfigError(
            f"study {study_name!r} was created with objectives {[o['name'] for o in stored]}; the config asks "
            f"{[o.name for o in exp.objectives]} (use another --study name)"
        )
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(f"study {study_name!r} has directions {study.directions}, the config asks {directions}")
    fresh = stored is None
    if fresh:
        study.set_user_attr("objectives", objectives_attr(exp))
        study.set_user_attr("experiment", exp.to_dict())
        study.set_user_attr("constraints", exp.constraints.model_dump())
    return study, fresh


def initial_points(exp: ExperimentConfig, space: SearchSpace) -> tuple[list[dict[str, Any]], list[str]]:
    """Params of the uncompressed model and of exp.budget.enqueue configs; returns (points, warnings)."""
    warnings: list[str] = []
    points: list[dict[str, Any]] = []
    if exp.budget.enqueue_uncompressed:
        try:
            points.append(space.params_of(CompressionConfig(), source="uncompressed model"))
        except ConfigError as e:
            warnings.append(f"not enqueuing the uncompressed model: {e}")
    for i, raw in enumerate(exp.budget.enqueue):
        cfg = CompressionConfig.from_dict(raw, source=f"budget.enqueue[{i}]")
        points.append(space.params_of(cfg, source=f"budget.enqueue[{i}]"))
    return points, warnings


def enqueue_initial(study: optuna.Study, exp: ExperimentConfig, space: SearchSpace) -> list[str]:
    """Enqueue `initial_points` (call on a fresh study only); returns warnings."""
    points, warnings = initial_points(exp, space)
    for p in points:
        study.enqueue_trial(p, user_attrs={"enqueued": True}, skip_if_exists=True)
    return warnings


def _count_started(study: optuna.Study) -> int:
    trials = study.get_trials(deepcopy=False)
    return sum(is_counted(t) or t.state == TrialState.RUNNING for t in trials)


def run_one(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], Any]) -> None:
    """Evaluate one asked trial and tell its outcome; KeyboardInterrupt re-queues its params and re-raises."""
    with Heartbeat(study, trial._trial_id):
        try:
            values = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except TrialFailed:
            study.tell(trial, state=TrialState.FAIL)
        except KeyboardInterrupt:
            trial.set_user_attr("state_detail", "interrupted")
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C)")
            study.tell(trial, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        except Exception as e:  # noqa: BLE001 - a bug outside the evaluator still only fails this trial
            trial.set_user_attr("state_detail", "failed")
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, values)


def run_loop(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    total: int,
    deadline: float | None,
    lock_path: Path,
    on_trial: Callable[[], None] | None = None,
) -> None:
    """Ask/evaluate/tell until the study counts `total` trials (or the deadline passes)."""
    lock = FileLock(str(lock_path))
    while deadline is None or time.time() < deadline:
        recover_dead_trials(study)
        with lock:
            if _count_started(study) >= total:
                return
            exhausted = getattr(study.sampler, "exhausted", None)
            if exhausted is not None and exhausted(study):
                return
            with warnings.catch_warnings():  # heartbeats are recorded by storage.Heartbeat around run_one
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = study.ask()
            mark_owner(study, trial._trial_id)
        run_one(study, trial, objective)
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
) -> SearchSummary:
    """Create or resume `study_name` and run it until it counts `trials` trials (default exp.budget)."""
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    total = trials if trials is not None else exp.budget.trials
    if total < 1:
        raise ConfigError(f"--trials must be >= 1, got {total}")
    timeout = timeout if timeout is not None else exp.budget.timeout_s
    seed = exp.seed if seed is None else seed
    space = space_for(exp)
    url = storage or default_storage_url(study_name, workers)
    store = make_storage(url)
    sampler_name = resolve_sampler_name(
        sampler or exp.budget.sampler, len(exp.objectives), total, exp.budget.population, space
    )
    study, fresh = create_or_load_study(exp, study_name, store)
    notes: list[str] = []
    # the grid covers every point of the space, and GridSampler does not count enqueued trials as visited
    if fresh and not study.get_trials(deepcopy=False) and sampler_name != "grid":
        notes += enqueue_initial(study, exp, space)
    if sampler_name == "grid" and space.size() is not None and total > space.size():
        notes.append(f"grid sampler: the space has {space.size()} points; stopping there, not at {total}")
        total = space.size()
    study.set_user_attr("sampler", sampler_name)
    started = time.time()
    deadline = started + timeout if timeout else None
    at_start = sum(is_counted(t) for t in study.get_trials(deepcopy=False))
    offset = len(study.get_trials(deepcopy=False))  # a resumed run must not replay the same random draws
    lock_path = runs_dir() / f"{study_name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)

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
                space, evaluator, study_dir(study_name), exp.objectives, exp.constraints, cache=True
            )
            try:
                run_loop(study, objective, total, deadline, lock_path, on_trial=report)
            finally:
                _close(evaluator)
        else:
            notes += make_sampler(sampler_name, seed, total, exp.budget.population, space)[1]
            _run_workers(exp, study_name, url, total, deadline, sampler_name, run_seed(sampler_name, seed, offset),
                         workers,
                         evaluator, report)
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
    """Feasible Pareto trials: number, values by objective name, config (for the CLI summary table)."""
    names = [o["name"] for o in study.user_attrs.get("objectives", [])] or [
        f"value{i}" for i in range(len(study.directions))
    ]
    rows = []
    for t in pareto_front(study.get_trials(deepcopy=False), study.directions):
        rows.append({"number": t.number, "values": dict(zip(names, t.values)),
                     "config": t.user_attrs.get("config", {}), "cached_from": t.user_attrs.get("cached_from")})
    return rows


def build_trial_evaluator(exp: ExperimentConfig) -> Evaluator:
    """The real evaluator; with budget.isolation "process" it runs each trial in a worker process, so a
    native crash or hang fails that trial only, and finetune.max_seconds is enforced by a kill."""
    from edgecompress.evaluators.evaluate import build_evaluator

    if exp.budget.isolation == "none":
        return build_evaluator(exp)
    from edgecompress.evaluators.isolated import IsolatedEvaluator

    return IsolatedEvaluator(functools.partial(build_evaluator, exp), max_seconds=exp.finetune.max_seconds)


# ---- local worker processes -----------------------------------------------------------------------
def _worker_main(
    exp_dict: dict[str, Any], study_name: str, url: str, total: int, deadline: float | None,
    sampler_name: str, seed: int, evaluator: Evaluator | None,
) -> None:
    """One worker process: load the study, run the shared ask/tell loop."""
    exp = ExperimentConfig(**exp_dict)
    space = space_for(exp)
    study, _ = create_or_load_study(exp, study_name, make_storage(url))
    study.sampler = make_sampler(sampler_name, seed, total, exp.budget.population, space)[0]
    evaluator = evaluator or build_trial_evaluator(exp)
    objective = make_objective(space, evaluator, study_dir(study_name), exp.objectives, exp.constraints)
    try:
        run_loop(study, objective, total, deadline, runs_dir() / f"{study_name}.lock")
    except KeyboardInterrupt:
        pass
    finally:
        _close(evaluator)


def _close(evaluator: Any) -> None:
    """Stop an evaluator's worker process, if it has one."""
    close = getattr(evaluator, "close", None)
    if callable(close):
        close()


SEED_STABLE_SAMPLERS = ("grid", "qmc")


def run_seed(sampler_name: str, seed: int, offset: int) -> int:
    """Seed for a (resumed or parallel) run: random-draw samplers get a fresh stream, while grid and QMC
    keep the study's seed, because their order of points is a function of it and a resume or a second
    worker must continue the same sequence (else points are visited twice and others never)."""
    return seed if sampler_name in SEED_STABLE_SAMPLERS else seed + offset


def _run_workers(
    exp: ExperimentConfig, study_name: str, url: str, total: int, deadline: float | None, sampler_name: str,
    seed: int, workers: int, evaluator: Evaluator | None, report: Callable[[], None],
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
                  run_seed(sampler_name, seed, 1000 * i), evaluator),
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
