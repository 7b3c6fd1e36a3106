"""A study's cascade candidates, the plan over them, and their deployed stage modules.

Candidates are the study's (near-)front trials with validation logits only; `plan_cascade` chooses stages and
thresholds on those logits and compares the result with the best single model; `stage_modules` loads each
chosen trial's deploy form (ONNX fp32/int8 or torch) for serving and timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.cascade.planning.builder import build_cascade
from edgecompress.cascade.planning.plan import CascadePlan, StagePlan, StageSpec
from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.study import artefact_store
from edgecompress.study import attrs as A

__all__ = ["Candidate", "measure_routing_overhead_ms", "plan_cascade", "stage_modules", "study_candidates"]


@dataclass
class Candidate:
    """A Pareto trial usable as a cascade stage: its StageSpec (val only) and where its files are."""

    number: int
    spec: StageSpec
    artefact_dir: Path
    val_accuracy: float
    precision: str
    config: dict[str, Any]
    classifier_size: int | None = None  # `crop: dic`: the classifier's side (the stage itself takes the canvas)

    @property
    def crop(self) -> str:
        return str(self.config.get("crop") or "none")


def study_candidates(study: Any, include_estimated: bool = False,
                     near_front: int = 0) -> tuple[list[Candidate], np.ndarray, list[str]]:
    """Pareto-optimal (accuracy, latency) trials with artefacts, sorted by latency; notes on what was left out.
    `near_front` > 0 also takes the trials of the next `near_front` non-dominated fronts (ranks 1..near_front):
    a cheap model just off the front can be the better first stage (the builder scores pairs jointly).

    Trials whose latency is estimated (sub-8-bit) are left out by default: a cascade's latency must be
    measured, and no runtime here runs them.
    """
    from edgecompress.study.frame import study_to_frame
    from edgecompress.study.front import front, front_ranks

    df = study_to_frame(study)
    notes: list[str] = []
    objectives = [{"name": "accuracy", "direction": "maximize"}, {"name": "latency_ms", "direction": "minimize"}]
    if not include_estimated and A.LATENCY_SOURCE in df:
        done = df[(df["state"] == "COMPLETE") & df["feasible"].astype(bool)]
        n_est = int((done[A.LATENCY_SOURCE] == "estimated").sum())
        if n_est:
            notes.append(f"{n_est} trials with estimated (sub-8-bit) latency left out")
    # the one front function, over feasible deployable trials (not the full front filtered afterwards)
    if near_front > 0:
        ranks = front_ranks(df, objectives, deployable=not include_estimated, feasible_only=True)
        rows = df[((ranks >= 0) & (ranks <= near_front)).to_numpy()]
    else:
        rows = front(df, objectives, deployable=not include_estimated, feasible_only=True)
    if rows.empty:
        raise EdgeCompressError("cascade needs at least 2 Pareto models; the study has no usable complete trial")
    cands: list[Candidate] = []
    labels: np.ndarray | None = None
    for _, row in rows.iterrows():
        folder = artefact_store.local_folder(row) or Path(str(row.get(A.ARTEFACT_DIR) or ""))
        if not (folder / ARTEFACT_FILES["val_logits"]).is_file():
            notes.append(f"trial {int(row['number'])}: no logits in {folder}, left out")
            continue
        logits = np.load(folder / ARTEFACT_FILES["val_logits"], allow_pickle=False)
        lab = np.load(folder / ARTEFACT_FILES["val_labels"], allow_pickle=False)
        if labels is None:
            labels = lab
        elif not np.array_equal(labels, lab):
            raise EdgeCompressError(f"trial {int(row['number'])}: validation labels differ from the other trials'")
        config = dict(row.get(A.CONFIG) or {})
        dic = config.get("crop") == "dic"  # its deployed model takes the raw canvas (box net -> crop -> classifier)
        size = _opt_int(row.get("pipeline_input_size"))  # served from the canvas (dic, or resize: served.py)
        if dic and size is None:
            notes.append(f"trial {int(row['number'])}: crop: dic without pipeline_input_size, left out")
            continue
        spec = StageSpec(name=f"trial-{int(row['number'])}", latency_ms=float(row["latency_ms"]),
                         input_size=size or int(row["input_size"]), val_logits=logits.astype(np.float32),
                         latency_batch_ms=_opt(row.get("latency_batch_ms")), batch_size=_opt_int(row.get("batch_size")))
        cands.append(Candidate(int(row["number"]), spec, folder, float(row["accuracy"]),
                               str(row.get("precision", "fp32")), config,
                               int(row["input_size"]) if dic else None))
    if len(cands) < 2:
        raise EdgeCompressError(f"cascade needs at least 2 Pareto models; the front has {len(cands)} "
                                f"(trials {[c.number for c in cands]}); run more trials")
    cands.sort(key=lambda c: c.spec.latency_ms)
    assert labels is not None
    return cands, labels, notes


def _opt(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


def _opt_int(v: Any) -> int | None:
    f = _opt(v)
    return None if f is None else int(f)


def measure_routing_overhead_ms(num_classes: int, kind: str = "margin", batch_size: int = 1,
                                repeats: int = 200) -> float:
    """Measured cost of one routing decision (confidence + threshold test) at `batch_size`, in ms.

    The builder adds it per escalation so a cascade must save more than it costs to route.
    """
    from edgecompress.cascade.planning.confidence import confidence
    from edgecompress.runtime.timing import TimingOptions, time_blocks

    z = np.random.default_rng(0).standard_normal((batch_size, num_classes)).astype(np.float32)
    return time_blocks([lambda: confidence(z, kind) < 0.5], TimingOptions(warmup=20, rounds=1, calls=repeats))[0]


def plan_cascade(cands: list[Candidate], labels: np.ndarray, *, min_accuracy: float | None = None,
                 max_latency: float | None = None, kind: str = "margin", combine: str = "last",
                 max_stages: int = 4, batch: bool = False, calibrate: bool = False,
                 routing_overhead_ms: float | None = None, call_overhead_ms: float = 0.0,
                 single_from: list[Candidate] | None = None) -> CascadePlan:
    """Default target: validation accuracy within 0.2 pp of the most accurate candidate; default routing
    overhead: measured on this machine (measure_routing_overhead_ms()); the pipeline passes the fused graph's
    measured overheads (fused.measure_fused_overheads) instead. `single_from`: the candidates (stand-alone
    latencies) the single-model alternative is judged on, when `cands` carry in-cascade costs (calibrate.py)."""
    if min_accuracy is None and max_latency is None:
        min_accuracy = max(c.val_accuracy for c in cands) - 0.002
    if routing_overhead_ms is None:
        bs = cands[0].spec.batch_size or 1
        routing_overhead_ms = measure_routing_overhead_ms(cands[0].spec.val_logits.shape[1], kind,
                                                          bs if batch else 1)
    plan = build_cascade([c.spec for c in cands], labels, min_accuracy=min_accuracy, max_latency=max_latency,
                         kind=kind, combine=combine, max_stages=max_stages, batch=batch, calibrate=calibrate,
                         routing_overhead_ms=routing_overhead_ms, call_overhead_ms=call_overhead_ms)
    single = _best_single(cands if single_from is None else single_from, min_accuracy, max_latency, batch)
    if single is not None and (len(plan.stages) > 1 or single_from is not None):
        lat = _latency(single, batch)
        cascade_better = len(plan.stages) > 1 and (
            (plan.predicted_latency_ms or 0.0) < lat if min_accuracy is not None else
            (plan.predicted_accuracy or 0.0) > single.val_accuracy)
        if not cascade_better:  # one model alone is at least as good: no cascade
            return CascadePlan(stages=[StagePlan(single.spec.name, single.spec.input_size, single.spec.latency_ms,
                                                 single.spec.latency_batch_ms, single.spec.batch_size,
                                                 single.val_accuracy)],
                               thresholds=[], kind=kind, combine=combine, batch=batch,
                               predicted_accuracy=single.val_accuracy, predicted_latency_ms=lat,
                               escalation_rates=[], constraint=dict(plan.constraint))
    return plan


def _latency(c: Candidate, batch: bool) -> float:
    return float(c.spec.latency_batch_ms) if batch and c.spec.latency_batch_ms else c.spec.latency_ms


def _best_single(cands: list[Candidate], min_accuracy: float | None, max_latency: float | None,
                 batch: bool) -> Candidate | None:
    """The single model a cascade must beat: cheapest meeting the accuracy floor, or most accurate in budget."""
    if min_accuracy is not None:
        ok = [c for c in cands if c.val_accuracy >= min_accuracy]
        return min(ok, key=lambda c: _latency(c, batch)) if ok else None
    ok = [c for c in cands if _latency(c, batch) <= (max_latency or 0.0)]
    return max(ok, key=lambda c: c.val_accuracy) if ok else None


def stage_modules(cands: dict[str, Candidate], names: list[str], exp: Any, data: Any,
                  deployed: bool = True, spinning: bool = True, workdir: Path | None = None) -> list[Any]:
    """Per stage: each trial's deploy form (a deploy.Deployed, deployed=True) or its fp32 torch model.
    A `crop: dic` trial's stage is its whole deployed pipeline from the raw canvas (evaluators.dic.DICPipeline:
    the trial's box net -> crop -> the classifier at its own size), as `export` builds it; its input is native.

    `spinning=False` for stages called in turn: ONNX Runtime's idle threads would otherwise spin on the
    cores the next stage needs (measured: 0.33 ms instead of 0.17 ms per batch-1 call of a 2-stage cascade).
    `workdir`: keep each stage's built .onnx under workdir/<name> (Deployed.path), for the fused graph.
    """
    from edgecompress.evaluators.served import ServedTrial

    out: list[Any] = []
    for name in names:
        c = cands[name]
        served = ServedTrial.load(c.artefact_dir, exp, data)  # what the search measured (evaluators/served.py)
        if served.input_size != c.spec.input_size:
            raise EdgeCompressError(f"{name}: its plan feeds it {c.spec.input_size} px, but it is served from "
                                    f"{served.input_size} px")
        if not deployed:
            out.append(served.module)
            continue
        out.append(served.deploy(exp.device.backend, "cpu", exp.device.measure_threads,
                                 workdir=None if workdir is None else workdir / name, spinning=spinning))
    return out
