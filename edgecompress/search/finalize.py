"""Finalize a study: search with a cheap proxy, then re-train the most promising configs at full fidelity.

The K most promising distinct configs of a search study (its feasible front first, then the next
non-dominated ranks) AND the uncompressed config are re-applied to the base model and fine-tuned on the
whole training split for E epochs with augmentation and distillation (the uncompressed config gets the
same epochs, so no gain from longer training is credited to compression), then measured like in the
search. Results go into the linked study `<study>-final` in the search study's storage: objective names
set, every trial carrying `proxy_trial` (the search trial it re-trains), `fidelity: final` and the hash of
its weights. It runs through the search runner with a sampler that only takes the enqueued configs, so it
is resumable and kill-safe like `search` (a rerun redoes nothing finished) and takes `--workers`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.evaluators.evaluator import Evaluator
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.search.optuna_runner import ProgressFn, SearchSummary, run_search
from edgecompress.search.study_setup import create_or_load_study, space_for
from edgecompress.spaces.config import CompressionConfig
from edgecompress.spaces.experiment import ExperimentConfig, parse_experiment
from edgecompress.study import attrs as A
from edgecompress.study.frame import frame_objectives, study_to_frame
from edgecompress.study.front import front_ranks
from edgecompress.study.intervals import PairedDifference, paired_difference
from edgecompress.study.storage import FINAL_SUFFIX, make_storage, study_location

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_TOP", "Chosen", "FinalizeSummary", "choose_configs", "final_experiment",
           "finalize_study"]

DEFAULT_TOP = 3
DEFAULT_EPOCHS = 3
SMALL_VAL = 2000  # below this many validation images, a close call between the two best is flagged
TIME_PER_TRIAL_FACTOR = 4  # finetune.max_seconds of the final study: this x the search's (longer training)


@dataclass(frozen=True)
class Chosen:
    """One config to finalize: the search trial it comes from, why it was chosen, its proxy accuracy."""

    proxy_trial: int | None
    config: dict[str, Any]
    config_hash: str
    reason: str  # "front rank 0", "rank 1", "uncompressed"
    proxy_accuracy: float | None


@dataclass
class FinalizeSummary:
    """What finalize chose and where the finalized study stands."""

    source_study: str
    study_name: str
    storage: str
    chosen: list[Chosen]
    search: SearchSummary
    epochs: int
    warnings: list[str] = field(default_factory=list)
    close_call: PairedDifference | None = None  # the two best proxy candidates' paired val difference


def choose_configs(df: Any, top: int, objectives: Any = None,
                   uncompressed: CompressionConfig | None = None, deployable: bool = False) -> list[Chosen]:
    """The `top` most promising distinct configs (feasible front first, then the next non-dominated ranks,
    within a rank the most accurate first) and the uncompressed config (as the study's space states it:
    `SearchSpace.uncompressed()`), in that order. `deployable`: ranks over the trials whose latency was
    measured on the study's device only (a sub-8-bit estimate cannot ship there)."""
    if top < 1:
        raise ConfigError(f"`top` must be >= 1, got {top}")
    objs = frame_objectives(df, objectives)
    ranks = front_ranks(df, objs, feasible_only=True, deployable=deployable)
    rows = df.assign(_rank=ranks.to_numpy())
    rows = rows[rows["_rank"] >= 0]
    acc = "accuracy" if "accuracy" in rows else objs[0]["name"]
    rows = rows.sort_values(["_rank", acc, "number"], ascending=[True, False, True], kind="stable")
    base_cfg = uncompressed or CompressionConfig()
    uncompressed_hash = base_cfg.config_hash()
    out: list[Chosen] = []
    seen: set[str] = set()
    for r in rows.to_dict("records"):
        h = r.get(A.CONFIG_HASH)
        if not isinstance(r.get(A.CONFIG), dict) or not h or h in seen or h == uncompressed_hash:
            continue
        seen.add(h)
        rank = int(r["_rank"])
        out.append(Chosen(int(r["number"]), dict(r[A.CONFIG]), str(h), "front" if rank == 0 else f"rank {rank}",
                          float(r[acc]) if acc in r else None))
        if len(out) == top:
            break
    base_rows = df[df[A.CONFIG_HASH] == uncompressed_hash] if A.CONFIG_HASH in df else df.iloc[0:0]
    done = base_rows[base_rows["state"] == "COMPLETE"] if len(base_rows) else base_rows
    number = int(done["number"].iloc[0]) if len(done) else None
    acc_u = float(done[acc].iloc[0]) if len(done) and acc in done else None
    out.append(Chosen(number, base_cfg.to_dict(), uncompressed_hash, "uncompressed", acc_u))
    return out


def final_experiment(exp: ExperimentConfig, epochs: int, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """The search's experiment at full fidelity: every training image, `epochs` epochs, augmentation, the
    fixed sampler over enqueued configs only; `overrides` (dotted keys, e.g. "finetune.lr") win."""
    if epochs < 1:
        raise ConfigError(f"`epochs` must be >= 1, got {epochs}")
    d = copy.deepcopy(exp.to_dict())
    d["finetune"].update(epochs=epochs, train_subset=None, augment=True,
                         max_seconds=exp.finetune.max_seconds * TIME_PER_TRIAL_FACTOR)
    d["space"]["finetune_epochs"] = None  # the final epochs are fixed, not searched
    d["budget"].update(sampler="fixed", enqueue_uncompressed=False, enqueue=[])
    for key, value in (overrides or {}).items():
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"override {key}: {p!r} is not a section of the experiment")
            node = node[p]
        node[parts[-1]] = value
    return parse_experiment(d, "finalize experiment")


def _close_call(df: Any, chosen: list[Chosen]) -> PairedDifference | None:
    """Paired validation difference of the two most accurate chosen proxy trials (None without their logits)."""
    ranked = sorted((c for c in chosen if c.proxy_trial is not None and c.proxy_accuracy is not None),
                    key=lambda c: -float(c.proxy_accuracy or 0.0))[:2]
    if len(ranked) < 2:
        return None
    correct = []
    for c in ranked:
        row = df[df["number"] == c.proxy_trial]
        folder = row[A.ARTEFACT_DIR].iloc[0] if len(row) and A.ARTEFACT_DIR in row else None
        try:
            logits = np.load(f"{folder}/{ARTEFACT_FILES['val_logits']}", allow_pickle=False)
            labels = np.load(f"{folder}/{ARTEFACT_FILES['val_labels']}", allow_pickle=False)
        except (OSError, ValueError, TypeError):
            return None
        correct.append(logits.argmax(1) == labels)
    if correct[0].shape != correct[1].shape:
        return None
    return paired_difference(correct[0], correct[1])


def finalize_study(
    study: Any,
    *,
    top: int = DEFAULT_TOP,
    epochs: int = DEFAULT_EPOCHS,
    overrides: dict[str, Any] | None = None,
    storage: Any = None,
    workers: int = 1,
    evaluator: Evaluator | None = None,
    progress: ProgressFn | None = None,
    on_chosen: Callable[[list[Chosen]], None] | None = None,
    deployable: bool = False,
) -> FinalizeSummary:
    """Re-train the `top` most promising configs of `study` (and the uncompressed one) at full fidelity
    into `<study>-final` in the same storage; resumable (a rerun redoes nothing finished). `deployable`:
    choose among configs whose latency was measured on the study's device (choose_configs)."""
    loc = study_location(study, storage, final="proxy")
    src = loc.study
    if src.study_name.endswith(FINAL_SUFFIX) or src.user_attrs.get(A.FINALIZED_FROM):
        raise ConfigError(f"study {src.study_name!r} is already a finalized study; finalize its search study")
    exp = A.study_experiment(src)
    fexp = final_experiment(exp, epochs, overrides)
    df = study_to_frame(src)
    if not (df["state"] == "COMPLETE").any():
        raise EdgeCompressError(f"study {src.study_name!r} has no complete trial to finalize")
    space = space_for(fexp)
    try:
        uncompressed = space.uncompressed()
    except ConfigError as e:
        raise ConfigError(f"finalize needs the uncompressed model in the study's space: {e}") from None
    chosen = choose_configs(df, top, uncompressed=uncompressed, deployable=deployable)
    if on_chosen is not None:
        on_chosen(chosen)
    notes: list[str] = []
    close = _close_call(df, chosen)
    if close is not None and not close.significant and close.n < SMALL_VAL:
        notes.append(f"the two best proxy candidates differ by {close.diff * 100:+.2f} pp on {close.n} validation "
                     f"images, 95% interval [{close.low * 100:+.2f}, {close.high * 100:+.2f}] pp: the search "
                     "cannot tell them apart; the finalized accuracies decide")
    name = src.study_name + FINAL_SUFFIX
    final, _ = create_or_load_study(fexp, name, make_storage(loc.url))
    final.set_user_attr(A.FINALIZED_FROM, src.study_name)
    final.set_user_attr(A.FIDELITY, "final")
    # every trial carries its config hash from the moment it is enqueued (a WAITING trial has no params yet)
    queued = {t.user_attrs.get(A.CONFIG_HASH) for t in final.get_trials(deepcopy=False)} - {None}
    for c in chosen:
        if c.config_hash in queued:
            continue
        try:
            params = space.params_of(CompressionConfig.from_dict(c.config), source=f"trial {c.proxy_trial}")
        except ConfigError as e:
            notes.append(f"not finalizing {c.reason} config: {e}")
            continue
        final.enqueue_trial(params, user_attrs={A.PROXY_TRIAL: c.proxy_trial, A.FIDELITY: "final",
                                                A.CONFIG_HASH: c.config_hash})
        queued.add(c.config_hash)
    summary = run_search(fexp, name, storage=loc.url, trials=len(queued), sampler="fixed", workers=workers,
                         evaluator=evaluator, progress=progress)
    return FinalizeSummary(src.study_name, name, loc.url, chosen, summary, epochs, notes + summary.warnings, close)
