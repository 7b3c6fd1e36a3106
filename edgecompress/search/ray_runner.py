"""Ray Tune backend: OptunaSearch (same sampler and space) + ASHA on per-epoch validation accuracy.

The Optuna study stays the system of record: every finished Ray trial is added to it (create_trial with the
same user attrs, constraints and artefact folder runs/<study>/trials/<number>/) by a Tune callback in the
driver, so results/ and cascade/ do not care which backend ran. The searcher samples from an in-memory
copy of the study's finished trials (warm start on resume). Ray is imported only here.

Cluster: `ray start --head` on one machine, `ray start --address HEAD:6379` on the others, then
`edgecompress search ... --backend ray --address HEAD:6379 --storage postgresql://...` (a storage every
node can reach; trials write artefacts under runs/ of the node they ran on, then the driver moves them).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from edgecompress.errors import ConfigError
from edgecompress.evaluators.result import EvalResult
from edgecompress.search.objective import (
    BOOKKEEPING_ATTRS,
    Evaluator,
    active_constraints,
    constraint_values,
    find_cached,
    link_artefacts,
    objective_values,
    result_attrs,
    trial_dir,
    write_trial_files,
)
from edgecompress.search.optuna_runner import (
    ProgressFn,
    SearchSummary,
    build_trial_evaluator,
    create_or_load_study,
    front_rows,
    initial_points,
    space_for,
    study_dir,
)
from edgecompress.search.progress import is_counted, study_stats
from edgecompress.search.samplers import make_sampler, resolve_sampler_name
from edgecompress.search.storage import default_storage_url, make_storage
from edgecompress.spaces.experiment import ExperimentConfig
from edgecompress.utils import runs_dir

METRIC = "val_accuracy"


def _trainable_factory(
    exp: ExperimentConfig, space: Any, url: str, study_name: str, folder: Path,
    evaluator: Evaluator | None, evaluator_factory: Callable[[ExperimentConfig], Evaluator] | None,
) -> Callable[[dict[str, Any]], None]:
    """The Tune function trainable: evaluate one config (or reuse the study's cached result)."""

    def trainable(params: dict[str, Any]) -> None:
        from ray import tune

        config = space.from_params(params)
        trial_id = tune.get_context().get_trial_id()
        out = folder / "ray" / str(trial_id)
        out.mkdir(parents=True, exist_ok=True)
        try:  # the config-hash cache (skipped where the storage is not reachable from this node)
            study = optuna.load_study(study_name=study_name, storage=make_storage(url, heartbeat=False))
            source = find_cached(study, config.config_hash())
        except Exception:  # noqa: BLE001
            source = None
        if source is not None:
            tune.report({METRIC: source.user_attrs.get("accuracy", 0.0), "ec_cached_from": source.number})
            return
        ev = evaluator or (evaluator_factory or build_trial_evaluator)(exp)

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
        acc = result.metrics.get("accuracy")
        tune.report({METRIC: float(acc) if acc is not None else 0.0, "ec_result": result.to_dict(),
                     "ec_artefacts": str(out)})

    return trainable


class _StudyWriter:
    """Driver-side: turn each finished Tune trial into a trial of the Optuna study."""

    def __init__(self, study: optuna.Study, exp: ExperimentConfig, space: Any, folder: Path,
                 on_trial: Callable[[], None]) -> None:
        self.study, self.exp, self.space, self.folder = study, exp, space, folder
        self.bounds = active_constraints(exp.constraints)
        self.distributions = space.distributions()
        self.on_trial = on_trial

    def write(self, tune_trial: Any, error: str | None = None) -> None:
        params = {k: tune_trial.config[k] for k in self.space.param_names}
        config = self.space.from_params(params)
        result = dict(tune_trial.last_result or {})
        number = len(self.study.get_trials(deepcopy=False))  # the driver is the only writer
        folder = trial_dir(self.folder, number)
        folder.mkdir(parents=True, exist_ok=True)
        attrs: dict[str, Any] = {"config": config.to_dict(), "config_hash": config.config_hash(),
                                 "artefact_dir": str(folder), "ray_trial_id": str(tune_trial.trial_id)}
        values, constraints, state = None, None, TrialState.PRUNED
        curve = {}
        if "ec_cached_from" in result:
            source = self.study.trials[int(result["ec_cached_from"])]
            attrs.update({k: v for k, v in source.user_attrs.items() if k not in ("artefact_dir", "ray_trial_id")})
            attrs.update(artefact_dir=str(folder), cached_from=source.number)
            link_artefacts(Path(source.user_attrs.get("artefact_dir", "")), folder)
            values, constraints, state = list(source.values), dict(source.constraints), TrialState.COMPLETE
            metrics = {k: v for k, v in source.user_attrs.items() if k not in BOOKKEEPING_ATTRS}
            ev = EvalResult(config=config, state=source.user_attrs.get("state_detail", "complete"),
                            metrics=metrics, violations=source.user_attrs.get("violations", {}))
        elif "ec_result" in result:
            ev = EvalResult.from_dict(result["ec_result"])
            src = Path(result.get("ec_artefacts", ""))
            if src.is_dir():
                for f in src.iterdir():
                    shutil.move(str(f), folder / f.name)
                shutil.rmtree(src, ignore_errors=True)
            if ev.state in ("complete", "infeasible"):
                try:
                    values = list(objective_values(self.exp.objectives, ev.metrics, ev.state))
                    constraints = constraint_values(self.bounds, ev.metrics, ev.violations)
                    state = TrialState.COMPLETE
                except Exception as e:  # noqa: BLE001
                    ev.state, ev.fail_reason = "failed", str(e)
            if ev.state == "failed":
                state = TrialState.FAIL
            attrs.update(result_attrs(ev, folder))
        else:  # stopped by ASHA (or errored) before the final report
            ev = EvalResult(config=config, state="failed" if error else "pruned", fail_reason=error)
            state = TrialState.FAIL if error else TrialState.PRUNED
            attrs.update(result_attrs(ev, folder))
        if METRIC in result and "ec_result" not in result and "ec_cached_from" not in result:
            curve = {int(result.get("epoch", 0)): float(result[METRIC])}
        ev.artefact_dir = str(folder)
        write_trial_files(folder, config, {**ev.to_dict(), "trial": number, "values": values,
                                           "cached_from": attrs.get("cached_from")})
        self.study.add_trial(optuna.trial.create_trial(
            state=state, values=values, params=params, distributions=self.distributions,
            user_attrs=attrs, intermediate_values=curve or None, constraints=constraints,
        ))
        self.on_trial()


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
) -> SearchSummary:
    """Run the study's remaining trials as Ray Tune trials (local Ray, or the cluster at `address`)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    if max_concurrent < 1:
        raise ConfigError(f"--workers (Ray concurrent trials) must be >= 1, got {max_concurrent}")
    total = trials if trials is not None else exp.budget.trials
    seed = exp.seed if seed is None else seed
    space = space_for(exp)
    url = storage or default_storage_url(study_name)
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
        searcher = _searcher_class(OptunaSearch)(
            space=space.distributions(), metric=[o.name for o in exp.objectives],
            mode=["max" if o.direction == "maximize" else "min" for o in exp.objectives],
            points_to_evaluate=points or None, sampler=built, study_name=study_name, storage=mirror,
        )
        scheduler = ASHAScheduler(metric=METRIC, mode="max", max_t=_max_epochs(exp, space) + 1, grace_period=1,
                                  reduction_factor=2)
        writer = _StudyWriter(study, exp, space, study_dir(study_name), report)
        trainable = _trainable_factory(exp, space, url, study_name, study_dir(study_name).resolve(), evaluator,
                                       evaluator_factory)
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
        # per-epoch reports carry val_accuracy only; the objectives come with the final report
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        try:
            tuner = tune.Tuner(
                tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
                tune_config=tune.TuneConfig(
                    search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                    max_concurrent_trials=max_concurrent, time_budget_s=timeout,
                ),
                run_config=tune.RunConfig(
                    name=study_name, storage_path=str((runs_dir() / "ray_results").resolve()),
                    callbacks=[_callback(writer)], verbose=0,
                ),
            )
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
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


def _searcher_class(base: type) -> type:
    """OptunaSearch that tells PRUNED/FAIL (not a broken COMPLETE) when the objectives were not reported."""

    class _Searcher(base):  # type: ignore[misc, valid-type]
        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials:
                return
            ev = (result or {}).get("ec_result")
            state, values = (TrialState.FAIL if error else TrialState.PRUNED), None
            if ev is not None and ev.get("state") in ("complete", "infeasible"):
                try:
                    values = list(objective_values([{"name": m, "direction": "maximize" if d == "max" else
                                                     "minimize"} for m, d in zip(self._metric, self._mode)],
                                                   ev.get("metrics", {}), ev["state"]))
                    state = TrialState.COMPLETE
                except Exception:  # noqa: BLE001
                    state = TrialState.FAIL
            elif ev is not None and ev.get("state") == "failed":
                state = TrialState.FAIL
            elif result and "ec_cached_from" in result:
                state = TrialState.PRUNED  # the cached twin is already in the mirror
            self._ot_study.tell(ot_trial, values, state=state)
            self._completed_trials.add(trial_id)

    return _Searcher


def _callback(writer: _StudyWriter) -> Any:
    from ray.tune import Callback

    class _WriteToStudy(Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            writer.write(trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            err = "Ray trial error"
            try:
                err = Path(trial.error_file).read_text().strip().splitlines()[-1][:500]
            except Exception:  # noqa: BLE001
                pass
            writer.write(trial, error=err)

    return _WriteToStudy()
