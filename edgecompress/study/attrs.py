"""The names a study and its trials carry: user-attribute keys, objective names and directions.

Objective names are stored with Optuna's public `study.set_metric_names`, so optuna-dashboard and
Optuna's own plots show "accuracy" / "latency_ms" instead of "values_0". Studies made before that
kept them in the "objectives" user attribute, which is still read.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import optuna

from edgecompress.errors import EdgeCompressError
from edgecompress.spaces.experiment import ExperimentConfig, parse_experiment

# ---- study user attributes
EXPERIMENT = "experiment"  # the ExperimentConfig dict the study was created with
EXPERIMENT_HASH = "experiment_hash"  # search.study_setup.experiment_hash: workers with another one are refused
MODEL_STRUCTURE = "model_structure"  # the model's structure as discovered once for the study (structure.py)
CONSTRAINTS_ATTR = "constraints"  # the configured constraint bounds
SAMPLER = "sampler"
BACKEND = "backend"
LEGACY_OBJECTIVES = "objectives"  # [{"name", "direction"}] of studies made before set_metric_names

# ---- trial user attributes (metrics of EvalResult are stored flat next to these): the only place their names are
# spelled (tests/test_source_rules_attrs.py); read and written through edgecompress.study.record.TrialRecord, which
# has a property for each
CONFIG = "config"
CONFIG_HASH = "config_hash"
STATE_DETAIL = "state_detail"  # complete | infeasible | failed | pruned | interrupted | died
FAIL_REASON = "fail_reason"
VIOLATIONS = "violations"
ARTEFACT_DIR = "artefact_dir"
CACHED_FROM = "cached_from"
WAITED_FOR = "waited_for"  # search.claim: the RUNNING trial with the same config this trial waited for
CLAIM_NOTE = "claim_note"  # search.claim: why a trial that waited trained after all
PRUNE_CLAMPED = "prune_clamped"  # {param: [asked, used]}: a ratio that would empty a layer, clamped (spaces.space)
ARTEFACT_URI = "artefact_uri"  # where the trial's artefacts were uploaded (an fsspec artefact store)
VAL_CURVE = "val_accuracy_curve"
LATENCY_SOURCE = "latency_source"  # measured | estimated
FIDELITY = "fidelity"  # proxy (search) | final (full-fidelity training); absent = proxy
ENQUEUED = "enqueued"
RETRY_OF = "retry_of"
PROXY_TRIAL = "proxy_trial"  # a finalized trial: the search trial whose config it re-trained
WEIGHTS_HASH = "weights_sha256"  # edgecompress.evaluators.compress.weights_hash of the trained model
#: trial attrs set when a trial is enqueued that a re-queued copy must keep
LINK_ATTRS = (PROXY_TRIAL, FIDELITY, CONFIG_HASH)

# ---- finalized studies
FINALIZED_FROM = "finalized_from"  # study attr of a finalized study: the search study's name

#: trial attrs that are bookkeeping, not metrics
BOOKKEEPING_ATTRS = frozenset({CONFIG, CONFIG_HASH, STATE_DETAIL, FAIL_REASON, VIOLATIONS, ARTEFACT_DIR,
                               CACHED_FROM, VAL_CURVE, WAITED_FOR, CLAIM_NOTE, ARTEFACT_URI, PRUNE_CLAMPED})
#: trial attrs that stay the trial's own when it is served from an identical config (search.objective and
#: search.ray_writer copy the rest from the source trial)
OWN_WHEN_SERVED = frozenset({ARTEFACT_DIR, WAITED_FOR, CLAIM_NOTE, PRUNE_CLAMPED})
#: state_detail values that count towards a search's --trials
COUNTED_DETAILS = ("complete", "infeasible", "failed", "pruned")
DEFAULT_FIDELITY = "proxy"


def objective_dicts(objectives: Sequence[Any]) -> list[dict[str, str]]:
    """[{"name", "direction"}] from Objective models, dicts or (name, direction) pairs."""
    out = []
    for o in objectives:
        if isinstance(o, dict):
            name, direction = o["name"], o["direction"]
        elif isinstance(o, (tuple, list)):
            name, direction = o[0], o[1]
        else:
            name, direction = o.name, o.direction
        out.append({"name": str(name), "direction": str(direction).lower()})
    return out


def set_objectives(study: optuna.Study, objectives: Sequence[Any]) -> None:
    """Name the study's objectives (Optuna's public metric names)."""
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2, stable in use (dashboard, plots)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o["name"] for o in objective_dicts(objectives)])


def study_objectives(study: optuna.Study) -> list[dict[str, str]]:
    """Objectives as [{"name", "direction"}] in trial.values order: Optuna's metric names, else the legacy
    user attribute, else value_0, value_1, ..."""
    directions = [d.name.lower() for d in study.directions]
    names = study.metric_names
    if not names:
        legacy = study.user_attrs.get(LEGACY_OBJECTIVES)
        if legacy and len(legacy) == len(directions):
            names = [str(o["name"]) for o in legacy]
    names = names or [f"value_{i}" for i in range(len(directions))]
    return [{"name": n, "direction": d} for n, d in zip(names, directions, strict=True)]


def study_experiment(study: optuna.Study) -> ExperimentConfig:
    """The ExperimentConfig a study was created with (one-line error for a study not made by edgecompress)."""
    raw = study.user_attrs.get(EXPERIMENT)
    if not isinstance(raw, dict):
        raise EdgeCompressError(f"study {study.study_name!r} has no {EXPERIMENT!r} user attribute (not made by "
                                "an edgecompress search?)")
    return parse_experiment(raw, f"study {study.study_name!r} experiment")
