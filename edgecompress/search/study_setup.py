"""The Optuna study of an experiment (space, hash check, create/load, first points, seeds), apart from running it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from edgecompress.errors import ConfigError
from edgecompress.search.recovery import study_lock
from edgecompress.spaces.config import CompressionConfig
from edgecompress.spaces.experiment import ExperimentConfig
from edgecompress.spaces.space import SearchSpace
from edgecompress.study import attrs as A
from edgecompress.study.attrs import objective_dicts, set_objectives, study_objectives
from edgecompress.study.storage import make_storage
from edgecompress.utils import artefacts_dir, stable_hash


def space_for(exp: ExperimentConfig) -> SearchSpace:
    """SearchSpace of an experiment: the stage structure and the pruning ratios that keep a channel in every
    layer come from building the model (no weights) at the dataset's channels and size."""
    return _space_and_structure(exp)[0]


_STRUCTURES: dict[str, dict[str, Any]] = {}  # experiment hash -> discovered structure (this process)


def model_structure(exp: ExperimentConfig) -> dict[str, Any]:
    """The experiment's model structure (JSON), discovered once per process and stored with the study."""
    key = experiment_hash(exp)
    if key not in _STRUCTURES:
        _space_and_structure(exp)
    return _STRUCTURES[key]


def _space_and_structure(exp: ExperimentConfig) -> tuple[SearchSpace, Any]:
    from edgecompress.evaluators.compress import prune_limits, stage_blocks
    from edgecompress.evaluators.data import data_shape
    from edgecompress.evaluators.models import create_model
    from edgecompress.evaluators.structure import attach_structure, check_axes

    in_chans, size = data_shape(exp.dataset)
    model = create_model(exp.model.name, num_classes=10, in_chans=in_chans, input_size=size, **exp.model.kwargs)
    struct = attach_structure(model, in_chans, size, stages=exp.model.stages,
                              ignored_layers=exp.model.ignored_layers)
    check_axes(struct, exp.space, size)
    blocks = stage_blocks(model)  # droppable structure (mobilenet_v2: 11, not its 19 modules)
    space = SearchSpace.from_config(exp.space, len(blocks), blocks)
    limits = prune_limits(model, exp.space.round_to)
    if len(limits) == len(blocks):
        space.set_prune_limits([lim.ratio for lim in limits])
    _STRUCTURES[experiment_hash(exp)] = struct.to_dict()
    return space, struct


def study_dir(study_name: str) -> Path:
    """Where the trials of a study write their artefacts: <artefact store>/<study>, absolute."""
    return (artefacts_dir() / study_name).absolute()


def experiment_hash(exp: ExperimentConfig) -> str:
    """What must agree between the workers of one study: the experiment without its budget (how many trials a
    worker runs and how it samples are its own business) and without its name. Unset (None) settings are left
    out, so a newer edgecompress that adds an optional setting hashes an old experiment the same."""
    return stable_hash(_without_none({k: v for k, v in exp.to_dict().items() if k not in ("budget", "name")}))


def _without_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _without_none(x) for k, x in v.items() if x is not None}
    return v


def check_experiment(study: optuna.Study, exp: ExperimentConfig) -> None:
    """ConfigError (one line) when `study` was created by an experiment with another `experiment_hash`."""
    stored = study.user_attrs.get(A.EXPERIMENT_HASH)
    if stored is not None and stored != experiment_hash(exp):
        raise ConfigError(
            f"study {study.study_name!r} was created by another experiment (hash {stored}, this config's is "
            f"{experiment_hash(exp)}): a worker must use the study's config (or use another study name)"
        )


def check_existing_study(exp: ExperimentConfig, study_name: str, url: str) -> None:
    """On a database server (PostgreSQL, MySQL), refuse a worker whose experiment differs from the study's
    before it loads data or trains anything (file storages are not created before the data checks)."""
    if "://" not in url or url.startswith("sqlite"):
        return
    try:
        study = optuna.load_study(study_name=study_name, storage=make_storage(url, heartbeat=False))
    except KeyError:
        return  # a new study
    check_experiment(study, exp)


def create_or_load_study(
    exp: ExperimentConfig, study_name: str, storage: optuna.storages.BaseStorage,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> tuple[optuna.Study, bool]:
    """The study (created with the experiment's objectives as metric names, or loaded); returns (study, fresh)."""
    directions = [o.direction for o in exp.objectives]
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5) if len(directions) == 1 else optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=study_name, storage=storage, sampler=sampler, pruner=pruner, directions=directions,
        load_if_exists=True,
    )
    fresh = A.EXPERIMENT not in study.user_attrs
    wanted = objective_dicts(exp.objectives)
    check_experiment(study, exp)
    if not fresh and study_objectives(study) != wanted:
        raise ConfigError(
            f"study {study_name!r} was created with objectives {[o['name'] for o in study_objectives(study)]}; "
            f"the config asks {[o['name'] for o in wanted]} (use another study name)"
        )
    if fresh:
        set_objectives(study, exp.objectives)
        study.set_user_attr(A.EXPERIMENT_HASH, experiment_hash(exp))
        study.set_user_attr(A.EXPERIMENT, exp.to_dict())
        study.set_user_attr(A.CONSTRAINTS_ATTR, exp.constraints.model_dump())
        study.set_user_attr(A.MODEL_STRUCTURE, model_structure(exp))
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
        study.enqueue_trial(p, user_attrs={A.ENQUEUED: True}, skip_if_exists=True)
    return warnings


SEED_STABLE_SAMPLERS = ("grid", "qmc")
RUN_INDEX = "ec:runs"  # study system attr: how many search runs (independent workers included) started on it


def claim_run_index(study: optuna.Study, storage: optuna.storages.BaseStorage, lock_path: Path) -> int:
    """A number unique to this run among all runs of the study (0 for the first), claimed under the study
    lock: independent workers started with the same command and seed get different random streams."""
    with study_lock(storage, study.study_name, lock_path):
        sid = storage.get_study_id_from_name(study.study_name)
        index = int(storage.get_study_system_attrs(sid).get(RUN_INDEX, 0))
        storage.set_study_system_attr(sid, RUN_INDEX, index + 1)
    return index


def run_seed(sampler_name: str, seed: int, offset: int) -> int:
    """Seed for a (resumed or parallel) run: random-draw samplers get a fresh stream, while grid and QMC
    keep the study's seed, because their order of points is a function of it and a resume or a second
    worker must continue the same sequence (else points are visited twice and others never)."""
    return seed if sampler_name in SEED_STABLE_SAMPLERS else seed + offset
