"""Ray Tune backend: OptunaSearch (same sampler and space) + ASHA on per-epoch validation accuracy.

The Optuna study stays the system of record: every finished Ray trial is added to it (create_trial with the
same user attrs, constraints and artefact folder runs/<study>/trials/<number>/) by the driver
(search.ray_writer), so results/ and cascade/ do not care which backend ran. The searcher is Ray's stock
OptunaSearch; it samples from an in-memory mirror of the study's finished trials (warm start on resume). Ray
is imported only here and in ray_writer's Tune callback, and only its public API is used.

What the trainable reports, and what the stock OptunaSearch and the study make of each outcome.
OptunaSearch.on_trial_complete(trial_id, result, error) tells the mirror COMPLETE with
`[result.get(m) for m in metric]` when Tune passes a result (the trial's last one); without a result, FAIL
if the trial errored, else PRUNED (a trial still pending when the search stops).
- per epoch: {"val_accuracy", "epoch"} only (ASHA's metric). `metric` is passed as a list even for one
  objective: OptunaSearch then ignores intermediate results (for a str metric it would index them).
- complete / infeasible evaluation: the final report carries the objective values flat under the objective
  names (e.g. {"accuracy": 0.91, "latency_ms": 0.12}), plus val_accuracy and the EvalResult ("ec_result"):
  OptunaSearch tells COMPLETE with them, and the driver's Tune callback writes COMPLETE with the same values.
- served from the config cache: the final report carries the cached trial's values the same way: COMPLETE
  in both (the study's copy points at its source with "cached_from").
- failed evaluation (the evaluator raised or returned "failed", or an objective is missing / not finite):
  the trainable reports the EvalResult (without val_accuracy, so ASHA does not act on it) and then raises
  TrialFailed, so Tune marks the trial errored: OptunaSearch is told error=True without a result -> FAIL.
  The driver writes errored trials after tuner.fit() from its ResultGrid: FAIL, fail_reason from the
  reported EvalResult, else the last line of Result.error (the trainable died before reporting). If fit()
  is interrupted (a second Ctrl-C) there is no ResultGrid: they are written with a generic reason.
- stopped by ASHA (or by the time budget) after a per-epoch report: OptunaSearch gets that last result,
  which has no objective values, and tries to tell COMPLETE with None; Optuna refuses it (ValueError, which
  OptunaSearch catches and logs; we drop that log line), so the mirror trial stays RUNNING, never a
  COMPLETE with made-up values. TPE (no constant liar), NSGA-II, random and QMC ignore RUNNING trials; the
  grid sampler counts them as started (offered again only once every grid point has started). The study
  records PRUNED, with the last per-epoch accuracy as intermediate value.
A failed evaluation is raised rather than reported with placeholder values because any values told to the
mirror would steer the sampler; an errored Tune trial is the public way to get FAIL told.

Cluster: `ray start --head` on one machine, `ray start --address HEAD:6379` on the others, then
`edgecompress search ... --backend ray --address HEAD:6379 --storage postgresql://... --artefacts /shared/dir`
(a storage and an artefact folder every node can reach). The driver resolves the runs folder and the
artefact store to absolute paths (utils.Locations) and each trial applies them before it builds its
evaluator: Ray runs a trial in its own working folder, where the relative `runs` would be a fresh folder (a
base model trained again per trial). The base model is trained by the driver before any trial starts; trials
load it from the store's cache. A trial writes its artefacts under <store>/<study>/ray/<trial id>/ and the
driver moves them to <store>/<study>/trials/<number>/ (with an fsspec URL store, through the store:
search.ray_artefacts); a complete trial whose artefacts the driver finds nowhere is recorded FAIL with the
reason, never COMPLETE without its model. GPUs per trial: search.ray_device.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from edgecompress.errors import ConfigError
from edgecompress.evaluators import Evaluator
from edgecompress.evaluators.result import EvalResult
from edgecompress.search.claim import wait_limit
from edgecompress.search.objective import TrialFailed, objective_values
from edgecompress.search.optuna_runner import (
    ProgressFn,
    SearchSummary,
    build_trial_evaluator,
    front_rows,
    prepare_trial_evaluator,
)
from edgecompress.search.progress import is_counted, study_stats
from edgecompress.search.ray_artefacts import upload_trial_output
from edgecompress.search.ray_claims import claim, start_board
from edgecompress.search.ray_device import assigned, trial_device, where
from edgecompress.search.ray_writer import METRIC, StudyWriter, study_callback
from edgecompress.search.samplers import make_sampler, resolve_sampler_name
from edgecompress.search.study_setup import (
    check_existing_study,
    create_or_load_study,
    initial_points,
    space_for,
    study_dir,
)
from edgecompress.spaces.experiment import ExperimentConfig
from edgecompress.study.storage import check_storage_url, default_storage_url, make_storage
from edgecompress.utils import Locations


def _trainable_factory(
    exp: ExperimentConfig, space: Any, url: str, study_name: str, folder: Path,
    evaluator: Evaluator | None, evaluator_factory: Callable[[ExperimentConfig], Evaluator] | None,
    locs: Locations | None = None, gpus_per_trial: float = 0.0, board: Any = None,
) -> Callable[[dict[str, Any]], None]:
    """The Tune function trainable: evaluate one config (or reuse the study's cached result).

    Its final report carries the objective values flat by objective name (what OptunaSearch reads); a
    failed evaluation is reported, then raised as TrialFailed (see the module docstring)."""
    names = [o.name for o in exp.objectives]

    def trainable(params: dict[str, Any]) -> None:
        import ray
        from ray import tune

        if locs is not None:  # the driver's runs folder and artefact store, not this trial's working folder
            locs.apply()
        config = space.from_params(params)
        trial_exp, device = trial_device(exp, gpus_per_trial, *assigned(ray, gpus_per_trial))  # ray_device
        trial_id = tune.get_context().get_trial_id()
        out = folder / "ray" / str(trial_id)
        out.mkdir(parents=True, exist_ok=True)
        # the config-hash cache, and the claim on a config another running trial trains (search.ray_claims)
        source, claimed = claim(board, lambda: optuna.load_study(study_name=study_name, storage=make_storage(
            url, heartbeat=False)), config.config_hash(), str(trial_id), wait_limit(exp.finetune.max_seconds))
        if source is not None:
            tune.report({METRIC: source.user_attrs.get("accuracy", 0.0), **dict(zip(names, source.values)),
                         "ec_cached_from": source.number, "ec_device": device, **claimed})
            return
        ev = evaluator or (evaluator_factory or build_trial_evaluator)(trial_exp)

        def on_epoch(epoch: int, val_accuracy: float) -> None:
            tune.report({METRIC: float(val_accuracy), "epoch": int(epoch)})

        try:
            result = ev(config, artefact_dir=out, on_epoch=on_epoch)
        except Exception as e:  # noqa: BLE001 - failures are data
            result = EvalResult(config=config, state="failed", fail_reason=f"{type(e).__name__}: {e}")
        finally:
            if ev is not evaluator and callable(getattr(ev, "close", None)):
                ev.close()  # a trial worker process built for this trial
        result.config = config
        values: tuple[float, ...] | None = None
        if result.state in ("complete", "infeasible"):
            try:
                values = objective_values(exp.objectives, result.metrics, result.state)
            except TrialFailed as e:
                result.state, result.fail_reason = "failed", str(e)
        final: dict[str, Any] = {"ec_result": result.to_dict(), "ec_artefacts": str(out), "ec_device": device,
                                 **where(ray), **upload_trial_output(out, study_name, str(trial_id)), **claimed}
        if values is not None:
            acc = result.metrics.get("accuracy")
            final = {METRIC: float(acc) if acc is not None else 0.0, **dict(zip(names, values)), **final}
        tune.report(final)
        if result.state == "failed":  # Tune marks the trial errored: OptunaSearch tells FAIL
            raise TrialFailed(result.fail_reason or "evaluation failed")

    return trainable


class _DropNoneTell(logging.Filter):
    """Drops OptunaSearch's log line for a trial stopped before its final report (the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "could not be cast to float" not in record.getMessage()


def run_ray_search(
    exp: ExperimentConfig,
    study_name: str,
    storage: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    sampler: str | None = None,
    seed: int | None = None,
    max_concurrent: int = 2,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    address: str | None = None,
    num_cpus: int | None = None,
    evaluator: Evaluator | None = None,
    evaluator_factory: Callable[[ExperimentConfig], Evaluator] | None = None,
    progress: ProgressFn | None = None,
    train_progress: Callable[[Any], None] | None = None,
    artefacts: str | None = None,
) -> SearchSummary:
    """Run the study's remaining trials as Ray Tune trials (local Ray, or the cluster at `address`).
    With the real evaluator, it is set up once here first (optuna_runner.prepare_trial_evaluator: data
    checked, base model trained and cached, followed by `train_progress`): a DataError stops the search
    before any study or trial exists. The runs folder and artefact store (`artefacts`) are resolved to
    absolute paths here and passed to every trial (module docstring)."""
    locs = Locations.resolve(artefacts)
    with locs.applied():
        return _run_ray_search(exp, study_name, storage, trials, timeout, sampler, seed, max_concurrent,
                               cpus_per_trial, gpus_per_trial, address, num_cpus, evaluator, evaluator_factory,
                               progress, train_progress, locs)


def _run_ray_search(
    exp: ExperimentConfig, study_name: str, storage: str | None, trials: int | None, timeout: float | None,
    sampler: str | None, seed: int | None, max_concurrent: int, cpus_per_trial: float, gpus_per_trial: float,
    address: str | None, num_cpus: int | None, evaluator: Evaluator | None,
    evaluator_factory: Callable[[ExperimentConfig], Evaluator] | None, progress: ProgressFn | None,
    train_progress: Callable[[Any], None] | None, locs: Locations,
) -> SearchSummary:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    if max_concurrent < 1:
        raise ConfigError(f"`workers` (Ray concurrent trials) must be >= 1, got {max_concurrent}")
    total = trials if trials is not None else exp.budget.trials
    seed = exp.seed if seed is None else seed
    space = space_for(exp)
    url = storage or default_storage_url(study_name)
    check_storage_url(url)
    check_existing_study(exp, study_name, url)
    if evaluator is None and evaluator_factory is None:
        probe = prepare_trial_evaluator(exp, None, train_progress)
        if callable(getattr(probe, "close", None)):
            probe.close()
    study, fresh = create_or_load_study(exp, study_name, make_storage(url))
    sampler_name = resolve_sampler_name(
        sampler or exp.budget.sampler, len(exp.objectives), total, exp.budget.population, space
    )
    notes: list[str] = []
    points: list[dict[str, Any]] = []
    if fresh and not study.get_trials(deepcopy=False) and sampler_name != "grid":
        points, notes = initial_points(exp, space)
    study.set_user_attr("sampler", sampler_name)
    study.set_user_attr("backend", "ray")
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    at_start = sum(is_counted(t) for t in finished)
    remaining = max(0, total - at_start)
    started = time.time()

    def report() -> None:
        if progress is not None:
            progress(study_stats(study, total, started, at_start))

    report()
    interrupted = False
    if remaining:
        built, warns = make_sampler(sampler_name, seed + len(finished), total, exp.budget.population, space)
        notes += warns
        mirror = optuna.storages.InMemoryStorage()
        optuna.create_study(study_name=study_name, storage=mirror,
                            directions=[o.direction for o in exp.objectives]).add_trials(
            [t for t in finished if set(t.distributions) == set(space.param_names)])
        searcher = OptunaSearch(
            space=space.distributions(), metric=[o.name for o in exp.objectives],  # a list even for one
            mode=["max" if o.direction == "maximize" else "min" for o in exp.objectives],
            points_to_evaluate=points or None, sampler=built, study_name=study_name, storage=mirror,
        )
        scheduler = ASHAScheduler(metric=METRIC, mode="max", max_t=_max_epochs(exp, space) + 1, grace_period=1,
                                  reduction_factor=2)
        writer = StudyWriter(study, exp, space, study_dir(study_name), report)
        own_ray = not ray.is_initialized()
        if own_ray:
            init_kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "ignore_reinit_error": True}
            if address:
                init_kw["address"] = address
            else:
                init_kw["num_cpus"] = num_cpus or max(1, int(max_concurrent * cpus_per_trial))
                init_kw["num_gpus"] = int(max_concurrent * gpus_per_trial + 0.999) if gpus_per_trial else 0
            ray.init(**init_kw)
        writer.board = start_board()
        trainable = _trainable_factory(exp, space, url, study_name, study_dir(study_name), evaluator,
                                       evaluator_factory, locs, gpus_per_trial, writer.board)
        # per-epoch reports carry val_accuracy only; the objectives come with the final report
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        # a failed evaluation is an errored Tune trial: its reason goes to the study, not a traceback on screen
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        quiet = _DropNoneTell()
        searcher_log = logging.getLogger(OptunaSearch.__module__)
        searcher_log.addFilter(quiet)
        grid = None
        try:
            tuner = tune.Tuner(
                tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
                tune_config=tune.TuneConfig(
                    search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                    max_concurrent_trials=max_concurrent, time_budget_s=timeout,
                ),
                run_config=tune.RunConfig(
                    name=study_name, storage_path=str(Path(locs.runs) / "ray_results"),
                    callbacks=[study_callback(writer)], verbose=0,
                ),
            )
            grid = tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            searcher_log.removeFilter(quiet)
            try:
                writer.write_errored(grid)
            finally:
                if own_ray:
                    ray.shutdown()
    stats = study_stats(study, total, started, at_start)
    return SearchSummary(
        study_name=study_name, storage=url, sampler=sampler_name, backend="ray", target=total, stats=stats,
        new_trials=stats.finished - at_start, elapsed_s=time.time() - started, interrupted=interrupted,
        warnings=notes, front=front_rows(study),
    )


def _max_epochs(exp: ExperimentConfig, space: Any) -> int:
    """Most fine-tune epochs a trial can run (ASHA's max_t; the final report is one more iteration)."""
    dims = {d.name: d for d in space.dims}
    if "finetune_epochs" in dims:
        d = dims["finetune_epochs"]
        return max(1, int(max(d.values()) if d.discrete else d.spec.high))
    return max(1, exp.finetune.epochs)
