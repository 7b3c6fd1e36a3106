"""Re-measure a study's latency on another device or backend (no retraining) into a new study.

Accuracy does not depend on the device, latency does: every complete trial's saved model (model.pt) is
rebuilt, deployed at the trial's precision on this device/backend and timed at batch 1 and at the serving
batch. The new study has the same params and user attrs with the latency/device keys replaced, objective
values recomputed in the study's objective order and latency constraints re-checked, so `pareto`,
`report` and `cascade` work on it unchanged. Trials stopped before fine-tuning (no model.pt) are
re-timed from the cached base model when it exists (latency depends only on the architecture); they stay
infeasible because they were never trained. Failed and pruned trials are copied as they are.

Latency is taken with the search's protocol (CompressionEvaluator.measure_latency: interleaved with the
uncompressed reference, drift-corrected, under the machine's exclusive compute lock). `remeasure_study` is
the same on the study's own device and backend, for a study searched on a busy machine: it re-measures
every trial (or only the front) quietly into a new study.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState, create_trial

from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.compress import load_compressed
from edgecompress.evaluators.data import DataBundle, load_data
from edgecompress.evaluators.evaluator import CompressionEvaluator, resolve_device
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.evaluators.served import ServedTrial
from edgecompress.export.trial_export import check_device
from edgecompress.spaces.config import CompressionConfig
from edgecompress.spaces.experiment import ExperimentConfig, parse_experiment
from edgecompress.study import attrs as A
from edgecompress.study.attrs import set_objectives, study_experiment, study_objectives
from edgecompress.study.constraints import violations as constraint_violations
from edgecompress.study.record import TrialRecord
from edgecompress.study.storage import JOURNAL_SUFFIXES, load_study, storage_for_path
from edgecompress.utils import is_finite_number, runs_dir

#: user attrs that describe the device/latency of a measurement (replaced by the new measurement)
LATENCY_KEYS = (
    "latency_ms", "latency_p90_ms", "latency_mean_ms", "latency_cv", "latency_repeats", "latency_batch_ms",
    "latency_batch_p90_ms", "latency_batch_cv", "batch_size", "device", "device_name", "threads", "backend",
    "runtime_version", "torch_version", "precision", "provider", A.LATENCY_SOURCE, "latency_note",
    "size_bytes", "measure_seconds",
)
_DEVICE_CONSTRAINTS = ("max_latency_ms", "max_latency_batch_ms", "max_size_bytes")
NOT_TRAINED = "not_trained"  # violation recorded on re-timed trials that were never fine-tuned
ProgressFn = Callable[[int, int, int], None]  # (done, total, source trial number)


@dataclass
class RetargetedTrial:
    """One source trial in the new study: old and new latency, and what changed."""

    source_number: int
    number: int
    state_detail: str
    accuracy: float | None
    old_latency_ms: float | None
    latency_ms: float | None
    latency_source: str | None
    note: str = ""


@dataclass
class RetargetSummary:
    """Where the new study is and what happened to each trial."""

    source_study: str
    study: str
    storage: str
    device: str
    device_name: str
    backend: str
    trials: list[RetargetedTrial] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (source trial number, why)
    left_out: int = 0  # trials not asked for (`only`), not in the new study


def retargeted_experiment(exp: ExperimentConfig, device: str, backend: str | None,
                          threads: int | None, latency_threads: int | None = None) -> ExperimentConfig:
    """`exp` with its device section pointed at the new device / backend / threads / latency threads."""
    d = exp.to_dict()
    d["device"] = {**d["device"], "device": device}
    if backend is not None:
        d["device"]["backend"] = backend
    if threads is not None:
        d["device"]["threads"] = threads
    if latency_threads is not None:
        d["device"]["latency_threads"] = latency_threads
    return parse_experiment(d, "retarget")


def target_storage(source: Any, storage: Any, new_name: str) -> Any:
    """Where the new study goes: the source's explicit storage, else runs/<new_name>.db for a bare name or a
    Study object (Optuna has no public accessor for a study's storage: pass `storage` to share it)."""
    if storage is not None:
        if isinstance(storage, str) and "://" not in storage and not storage.startswith("journal:"):
            return storage_for_path(Path(storage))
        return storage
    text = "" if isinstance(source, optuna.Study) else str(source)
    if "://" in text or text.startswith("journal:"):
        return text
    if text.endswith((".db", *JOURNAL_SUFFIXES)) or os.sep in text:
        return storage_for_path(Path(text))
    return f"sqlite:///{runs_dir() / new_name}.db"


def _storage_label(store: Any) -> str:
    return store if isinstance(store, str) else type(store).__name__


class _Remeasurer:
    """Deploys and times models on the new device with the experiment's latency settings."""

    def __init__(self, exp: ExperimentConfig, data: DataBundle) -> None:
        self.exp = exp
        # measure_latency as in the search; its reference never trains (reference_model below)
        self.ev = CompressionEvaluator(exp, data=data, reference=self.reference_model)
        self._base: Any = None

    def measure(self, model: torch.nn.Module, cfg: CompressionConfig, size: int,
                folder: Path | None = None) -> dict[str, Any]:
        ev, d = self.ev, self.exp.device
        # served as the evaluator served it; a missing box net stands in by its architecture (timing only)
        served = ServedTrial.load(folder, self.exp, ev.data, config=cfg, classifier=model, size=size, stand_in=True)
        dep = served.deploy(d.backend, ev.device, d.measure_threads)
        return served.latency_metrics(ev.measure_latency(dep, served.input_size), dep)

    def reference_model(self) -> torch.nn.Module:
        """The latency reference: the cached base model, else its architecture untrained (latency does not
        depend on the weights), so retarget never trains."""
        base = self.base_model()
        if base is not None:
            return base
        from edgecompress.evaluators.base_model import build_model

        return build_model(self.exp, self.ev.data).eval()

    def base_model(self) -> torch.nn.Module | None:
        """The cached base model, or None when it was never trained here (no training in retarget)."""
        from edgecompress.evaluators.base_model import base_dir, get_base_model

        if self._base is None:
            if not (base_dir(self.exp) / "model.pt").is_file():
                return None
            self._base = get_base_model(self.exp, self.ev.data).model
        return self._base


def _new_violations(old: dict[str, Any], metrics: dict[str, Any], exp: ExperimentConfig) -> dict[str, float]:
    """Old violations with the device-dependent ones recomputed from the new metrics."""
    out = {k: float(v) for k, v in (old or {}).items() if is_finite_number(v) and k not in _DEVICE_CONSTRAINTS}
    new = constraint_violations(metrics, exp.constraints, "pre")
    out.update({k: v for k, v in new.items() if k in _DEVICE_CONSTRAINTS})
    return out


def _objective_values(objectives: list[dict[str, str]], attrs: dict[str, Any]) -> list[float]:
    values = []
    for o in objectives:
        v = attrs.get(o["name"])
        if not is_finite_number(v):
            if o["name"] == "accuracy":
                v = 0.0  # never fine-tuned: worst accuracy, as the search records it
            else:
                raise EdgeCompressError(f"objective {o['name']!r} missing after re-measurement")
        values.append(float(v))
    return values


def _retarget_one(t: FrozenTrial, rm: _Remeasurer, objectives: list[dict[str, str]], device_label: str,
                  source_name: str) -> tuple[FrozenTrial, RetargetedTrial] | str:
    """The re-measured copy of a complete trial, or the reason it is skipped."""
    ua = dict(t.user_attrs)
    try:
        cfg = CompressionConfig.from_dict(ua[A.CONFIG], f"trial {t.number} config")
    except (KeyError, TypeError):
        return f"no {A.CONFIG!r} user attribute"
    folder = TrialRecord(ua).artefact_dir
    weights = Path(folder) / ARTEFACT_FILES["model"] if isinstance(folder, str) and folder else None
    trained = weights is not None and weights.is_file()
    note = ""
    if trained:
        model, meta = load_compressed(weights)
        size = int(meta.get("input_size") or cfg.input_size(rm.ev.data.native_size))
    else:
        base = rm.base_model()
        if base is None:
            return "no saved model and no cached base model to rebuild its architecture"
        from edgecompress.evaluators.compress import compress_model

        size = cfg.input_size(rm.ev.data.native_size)
        model, _ = compress_model(base, cfg, torch.randn(1, rm.ev.data.in_chans, size, size))
        note = "architecture re-timed; never fine-tuned"
    metrics = rm.measure(model, cfg, size, Path(folder) if isinstance(folder, str) and folder else None)
    old_latency = ua.get("latency_ms")
    attrs = {k: v for k, v in ua.items() if k not in LATENCY_KEYS and not k.startswith("latency_")}
    attrs.update(metrics)
    attrs["retargeted_from"] = {"study": source_name, "trial": t.number, "latency_ms": old_latency,
                                "device": ua.get("device"), "device_name": ua.get("device_name"),
                                "backend": ua.get("backend")}
    violations = _new_violations(TrialRecord(ua).violations, attrs, rm.exp)
    if not trained:
        violations[NOT_TRAINED] = 1.0
    broken = [k for k, v in violations.items() if v > 0]
    attrs.update(TrialRecord.attrs(violations=violations, state_detail="infeasible" if broken else "complete"))
    attrs.pop(A.FAIL_REASON, None)
    if broken:
        attrs[A.FAIL_REASON] = f"constraint violated on {device_label}: {', '.join(broken)}"
    values = _objective_values(objectives, attrs)
    configured = {k for k, v in rm.exp.constraints.model_dump().items() if v is not None}
    constraints = {k: v for k, v in violations.items() if k in configured or k == NOT_TRAINED}
    frozen = create_trial(state=TrialState.COMPLETE, values=values, params=t.params,
                          distributions=t.distributions, user_attrs=attrs,
                          intermediate_values=t.intermediate_values, constraints=constraints or None)
    acc = attrs.get("accuracy")
    rec = TrialRecord(attrs)
    info = RetargetedTrial(t.number, -1, str(rec.state_detail), float(acc) if is_finite_number(acc) else None,
                           float(old_latency) if is_finite_number(old_latency) else None, float(attrs["latency_ms"]),
                           rec.latency_source, note)
    return frozen, info


def retarget_study(source: Any, *, device: str = "cpu", backend: str | None = None,
                   new_study: str | None = None, storage: Any = None, new_storage: Any = None,
                   threads: int | None = None, data: DataBundle | None = None, overwrite: bool = False,
                   progress: ProgressFn | None = None, only: Collection[int] | None = None,
                   label: str = "retargeted", latency_threads: int | None = None) -> RetargetSummary:
    """Re-measure every complete trial of `source` on `device`/`backend` into a new study (no retraining).

    The new study is named `new_study` (default `<source>-<device>`); it lives in `new_storage`, else in the
    source's explicit storage, else at runs/<new name>.db. An existing study of that name is an error
    unless `overwrite`. `only`: the trial numbers to re-measure and keep; the others are left out of the
    new study (counted in `left_out`).
    """
    check_device(device)
    src = load_study(source, storage)
    exp = retargeted_experiment(study_experiment(src), device, backend, threads, latency_threads)
    name = new_study or f"{src.study_name}-{device}"
    if name == src.study_name and new_storage is None:
        raise EdgeCompressError(f"`new_study`: {name!r} is the source study; choose another name")
    store = new_storage if new_storage is not None else target_storage(source, storage, name)
    if name in optuna.get_all_study_names(store):
        if not overwrite:
            raise EdgeCompressError(f"study {name!r} already exists in {_storage_label(store)}: choose "
                                    "another `new_study` name or delete it")
        optuna.delete_study(study_name=name, storage=store)
    data = data if data is not None else load_data(exp.dataset, exp.seed)
    rm = _Remeasurer(exp, data)
    objectives = study_objectives(src)
    device_label = f"{rm.ev.device} ({exp.device.backend})"
    frozen: list[tuple[FrozenTrial, RetargetedTrial | None]] = []
    skipped: list[tuple[int, str]] = []
    trials = sorted(src.get_trials(deepcopy=False), key=lambda t: t.number)
    left_out = 0
    if only is not None:
        keep = set(only)
        left_out = sum(t.number not in keep for t in trials)
        trials = [t for t in trials if t.number in keep]
    for i, t in enumerate(trials):
        if t.state == TrialState.COMPLETE:
            out = _retarget_one(t, rm, objectives, device_label, src.study_name)
            if isinstance(out, str):
                skipped.append((t.number, out))
            else:
                frozen.append(out)
        elif t.state in (TrialState.FAIL, TrialState.PRUNED):
            frozen.append((create_trial(state=t.state, params=t.params, distributions=t.distributions,
                                        user_attrs=dict(t.user_attrs),
                                        intermediate_values=t.intermediate_values), None))
        else:
            skipped.append((t.number, f"{t.state.name.lower()} (unfinished)"))
        if progress is not None:
            progress(i + 1, len(trials), t.number)
    # create the study only once everything is measured: an interrupted retarget leaves no half study
    new = optuna.create_study(study_name=name, storage=store, directions=src.directions)
    set_objectives(new, objectives)
    for k, v in src.user_attrs.items():
        new.set_user_attr(k, v)
    new.set_user_attr("experiment", exp.to_dict())
    new.set_user_attr("retargeted_from", {"study": src.study_name, "device": device, "backend": exp.device.backend,
                                          "how": label, "left_out": left_out})
    first = len(new.trials)
    summary = RetargetSummary(src.study_name, name, _storage_label(store), rm.ev.device,
                              str(next((f.user_attrs.get("device_name") for f, i in frozen if i), "")),
                              exp.device.backend, skipped=skipped, left_out=left_out)
    for k, (ft, info) in enumerate(frozen):
        new.add_trial(ft)
        if info is not None:
            info.number = first + k
            summary.trials.append(info)
    return summary


def front_numbers(source: Any, storage: Any = None) -> list[int]:
    """Trial numbers on the Pareto front of a study (the `pareto` command's front)."""
    from edgecompress.study import front, study_to_frame

    df = study_to_frame(load_study(source, storage))
    return [int(n) for n in front(df)["number"]] if len(df) else []


def remeasured_name(study_name: str) -> str:
    """The default name of a study's quiet re-measurement (remeasure_study's new study)."""
    return f"{study_name}-remeasured"


def remeasure_study(source: Any, *, front_only: bool = False, new_study: str | None = None, storage: Any = None,
                    new_storage: Any = None, data: DataBundle | None = None, overwrite: bool = False,
                    progress: ProgressFn | None = None, latency_threads: int | None = None) -> RetargetSummary:
    """Re-measure a study's latencies on its own device, backend and threads with the search's protocol
    (interleaved reference, drift-corrected, exclusive compute lock) into a new study (default
    `<source>-remeasured`); `front_only` keeps only the front's trials. For a study searched on a busy
    machine: run it when the machine is quiet (nothing trains here, the measurements take the lock).
    `latency_threads` re-measures on another thread count (device.latency_threads), e.g. 1 after a
    search that timed with as many threads as cores."""
    src = load_study(source, storage)
    exp = study_experiment(src)
    device = resolve_device(exp.device.device)
    only = front_numbers(src) if front_only else None
    return retarget_study(source, device=device,
                          new_study=new_study or remeasured_name(src.study_name), storage=storage,
                          new_storage=new_storage, data=data, overwrite=overwrite, progress=progress, only=only,
                          label="remeasured", latency_threads=latency_threads)
