"""Build a cascade from a study and measure it end to end on the test split.

Thresholds are chosen on validation logits only; test logits are read here, after the plan is fixed, to
report accuracy. Latency is measured on the runtime the single models were measured on (each stage is the trial's deploy
form, e.g. ONNX Runtime fp32 or int8, routed by LeanCascade), with the same per-sample loop for the cascade
and for the best single model (called through the same array path), so the numbers compare like for like.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecompress.cascade.pipeline.study_candidates import (
    Candidate,
    stage_modules,
)
from edgecompress.cascade.planning.builder import build_cascade, cascade_front, seed_rule_plan
from edgecompress.cascade.planning.plan import CascadePlan, simulate
from edgecompress.cascade.serving.fused import (
    INPUT,
    LOGITS,
    FusedCheck,
    check_fused,
    fused_cascade_graph,
    fused_session,
)
from edgecompress.cascade.serving.lean import LeanCascade, deployed_stage, resize_array
from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.runtime.timing import TimingOptions, time_each


def per_call_ms(fn: Any, inputs: list[Any], warmup: int = 30) -> tuple[float, float, float]:
    """(mean, p90, p99) ms per call over `inputs`, after `warmup` calls."""
    times, _ = time_each(fn, inputs, TimingOptions(warmup=warmup))  # the timing engine, under the compute lock
    q = np.percentile(times, [90, 99])
    return statistics.fmean(times), float(q[0]), float(q[1])


@dataclass
class CascadeEvaluation:
    """Test-split accuracy, escalation and measured latency of a cascade next to the best single model."""

    plan: dict[str, Any]
    stage_trials: list[int]
    stage_precisions: list[str]
    predicted_val_accuracy: float
    predicted_latency_ms: float
    predicted_test_accuracy: float
    predicted_test_latency_ms: float
    test_accuracy: float
    test_escalation_rates: list[float]
    measured_latency_b1_ms: float
    measured_latency_batch_ms: float
    batch_size: int
    best_single: dict[str, Any]
    latency_reduction_b1: float
    latency_reduction_batch: float
    accuracy_delta_pp: float
    prediction_error: float
    seed_rule: dict[str, Any] = field(default_factory=dict)
    front: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    samples_timed: int = 0
    fused: bool = False  # latency and accuracy measured on the one fused ONNX graph
    fused_check: dict[str, Any] = field(default_factory=dict)
    latency_percentiles_ms: dict[str, float] = field(default_factory=dict)
    accuracy_delta_interval_pp: list[float] = field(default_factory=list)  # paired 95% interval
    risk: dict[str, Any] = field(default_factory=dict)
    fused_overheads: dict[str, float] = field(default_factory=dict)  # what the planner charged (measured)
    refinement: dict[str, Any] = field(default_factory=dict)  # in-cascade stage costs (calibrate.refine_plan)
    stage_crops: list[str] = field(default_factory=list)  # per stage: "none" or "dic" (input: the raw canvas)
    stage_classifier_sizes: list[int] = field(default_factory=list)  # per stage: the classifier's input side
    candidates: list[dict[str, Any]] = field(default_factory=list)  # what the builder chose from (val only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_cascade(study: Any, plan: CascadePlan, cands: list[Candidate], val_labels: np.ndarray, exp: Any,
                     data: Any, samples: int = 1000,
                     notes: list[str] | None = None) -> tuple[CascadeEvaluation, Any]:
    """Measure `plan` end to end on the test split and compare with the best single model and the seed's rule.

    A 2+ stage plan is served as ONE fused ONNX graph (cascade/serving/fused.py), checked against the LeanCascade of
    the same deployed stages on the whole test split before it is timed; returns (evaluation, fused
    ModelProto or None)."""
    from edgecompress.evaluators.splits import make_loader
    from edgecompress.runtime.latency import latency_lock

    by_name = {c.spec.name: c for c in cands}
    names = plan.names
    test = {c.spec.name: np.load(c.artefact_dir / ARTEFACT_FILES["test_logits"]) for c in cands}
    test_labels = np.load(cands[0].artefact_dir / ARTEFACT_FILES["test_labels"])
    sim_test = simulate(plan, {n: test[n] for n in names}, test_labels)
    # best single model: the most accurate candidate on validation (what a user would ship without a cascade)
    best = max(cands, key=lambda c: (c.val_accuracy, -c.spec.latency_ms))
    best_test_acc = float((test[best.spec.name].argmax(1) == test_labels).mean())

    native = data.native_size
    fused_model, check, serve = _served_form(by_name, names, plan, exp, data)
    single_stage = deployed_stage(stage_modules(by_name, [best.spec.name], exp, data)[0])
    # accuracy of the served form itself on the whole test split
    preds = [serve(x.numpy()).argmax(1) for x, _ in make_loader(data.test, native, 256)]
    served_correct = np.concatenate(preds) == test_labels
    runtime_acc = float(served_correct.mean())
    # latency: the same loop for both, batch 1 and serving batch, under the device lock
    torch.set_num_threads(exp.device.threads)
    n = min(samples, len(data.test))
    xs = [x.numpy() for x, _ in make_loader(data.test, native, 1, limit=n)]
    bs = exp.device.batch_size
    xb = [x.numpy() for x, _ in make_loader(data.test, native, bs, limit=max(n, 4 * bs))]
    xb = [x for x in xb if len(x) == bs]

    def single_fn(a: np.ndarray) -> np.ndarray:
        return single_stage(resize_array(a, best.spec.input_size))

    with latency_lock():
        c_b1, c_p90, c_p99 = per_call_ms(serve, xs)
        s_b1, s_p90, s_p99 = per_call_ms(single_fn, xs)
        c_bb, c_bp90, c_bp99 = per_call_ms(serve, xb, warmup=3)
        s_bb, s_bp90, s_bp99 = per_call_ms(single_fn, xb, warmup=3)
    percentiles = {"cascade_b1_p90": c_p90, "cascade_b1_p99": c_p99, "single_b1_p90": s_p90,
                   "single_b1_p99": s_p99, "cascade_batch_p90": c_bp90, "cascade_batch_p99": c_bp99,
                   "single_batch_p90": s_bp90, "single_batch_p99": s_bp99}
    interval = paired_interval_pp(served_correct, test[best.spec.name].argmax(1) == test_labels)
    # the seed's rule at equal validation accuracy, and with its fixed threshold on the same two ends
    seed: dict[str, Any] = {}
    try:
        seed_plan = build_cascade([c.spec for c in cands], val_labels, min_accuracy=plan.predicted_accuracy,
                                  kind="margin", combine="seed_alpha", max_stages=2)
        seed_test = simulate(seed_plan, {n_: test[n_] for n_ in seed_plan.names}, test_labels)
        seed = {"plan": seed_plan.to_dict(), "predicted_latency_ms": seed_plan.predicted_latency_ms,
                "test_accuracy": seed_test.accuracy, "test_expected_latency_ms": seed_test.expected_latency_ms,
                "latency_reduction_vs_best_single": 1 - seed_test.expected_latency_ms / best.spec.latency_ms}
    except EdgeCompressError as e:
        seed = {"error": str(e)}
    try:
        fixed = seed_rule_plan(cands[0].spec, best.spec, threshold=0.03, alpha=1.6, labels=val_labels)
        fixed_test = simulate(fixed, {n_: test[n_] for n_ in fixed.names}, test_labels)
        seed["fixed_threshold_0.03"] = {"stages": fixed.names, "test_accuracy": fixed_test.accuracy,
                                        "test_expected_latency_ms": fixed_test.expected_latency_ms}
    except (EdgeCompressError, ValueError) as e:
        seed["fixed_threshold_0.03"] = {"error": str(e)}
    front = [{"expected_latency_ms": p.predicted_latency_ms, "accuracy": p.predicted_accuracy, "stages": p.names}
             for p in cascade_front([c.spec for c in cands], val_labels, kind=plan.kind, combine=plan.combine)]
    predicted = plan.predicted_latency_ms or 0.0
    ev = CascadeEvaluation(
        plan=plan.to_dict(), stage_trials=[by_name[n_].number for n_ in names],
        stage_precisions=[by_name[n_].precision for n_ in names],
        predicted_val_accuracy=float(plan.predicted_accuracy or 0.0), predicted_latency_ms=predicted,
        predicted_test_accuracy=sim_test.accuracy, predicted_test_latency_ms=sim_test.expected_latency_ms,
        test_accuracy=runtime_acc, test_escalation_rates=list(sim_test.escalation_rates),
        measured_latency_b1_ms=c_b1, measured_latency_batch_ms=c_bb, batch_size=bs,
        best_single={"trial": best.number, "val_accuracy": best.val_accuracy, "test_accuracy": best_test_acc,
                     "latency_ms": best.spec.latency_ms, "measured_latency_b1_ms": s_b1,
                     "measured_latency_batch_ms": s_bb},
        latency_reduction_b1=1 - c_b1 / s_b1, latency_reduction_batch=1 - c_bb / s_bb,
        accuracy_delta_pp=100 * (runtime_acc - best_test_acc),
        prediction_error=_rel_error(predicted, c_bb if plan.batch else c_b1),
        seed_rule=seed, front=front, notes=list(notes or []), samples_timed=n,
        fused=fused_model is not None, fused_check=check.to_dict() if check is not None else {},
        latency_percentiles_ms=percentiles, accuracy_delta_interval_pp=list(interval),
        stage_crops=[by_name[n_].crop for n_ in names],
        stage_classifier_sizes=[by_name[n_].classifier_size or by_name[n_].spec.input_size for n_ in names],
        candidates=[{"trial": c.number, "crop": c.crop, "input_size": c.spec.input_size,
                     "classifier_size": c.classifier_size or c.spec.input_size, "latency_ms": c.spec.latency_ms,
                     "val_accuracy": c.val_accuracy, "precision": c.precision} for c in cands],
    )
    return ev, fused_model


def _served_form(by_name: dict[str, Candidate], names: list[str], plan: CascadePlan, exp: Any,
                 data: Any) -> tuple[Any, FusedCheck | None, Callable[[np.ndarray], np.ndarray]]:
    """(fused ModelProto, its check, the serving function). The fused graph is built from each stage's deployed
    ONNX model (fp32 or int8 as measured) and checked against the LeanCascade of the same stages on the whole
    test split; a study on a torch backend has no ONNX stages: LeanCascade serves (fused model None)."""
    from edgecompress.evaluators.splits import make_loader

    native = data.native_size
    with tempfile.TemporaryDirectory(prefix="edgecompress-cascade-") as tmp:
        stages = stage_modules(by_name, names, exp, data, spinning=len(names) == 1, workdir=Path(tmp))
        cascade = LeanCascade([deployed_stage(d) for d in stages], plan)  # the reference: the same stages
        if not all(str(d.path or "").endswith(".onnx") for d in stages):
            return None, None, cascade
        fused_model = fused_cascade_graph([d.path for d in stages], plan, data.in_chans, native, data.num_classes)
    sess = fused_session(fused_model, exp.device.measure_threads)
    int8 = any(d.base_precision == "int8" for d in stages)
    check = check_fused(sess, cascade.route, [x.numpy() for x, _ in make_loader(data.test, native, 256)],
                        rel_tolerance=0.05 if int8 else 0.0)
    if not check.ok:
        raise EdgeCompressError(
            f"fused cascade graph disagrees with the reference cascade on the test split: argmax agreement "
            f"{check.argmax_agreement:.4f} (need {check.min_agreement}), max |logit diff| "
            f"{check.max_abs_diff:.2g} (tolerance {check.tolerance:g})")

    def serve(a: np.ndarray) -> np.ndarray:
        return sess.run([LOGITS], {INPUT: a})[0]

    return fused_model, check, serve


def _rel_error(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured if measured > 0 else float("nan")


def paired_interval_pp(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[float, float]:
    """95% interval (pp) of accuracy(a) - accuracy(b) on the same images (Newcombe's paired score interval,
    study.intervals.paired_difference)."""
    from edgecompress.study.intervals import paired_difference

    r = paired_difference(a_correct, b_correct)
    return 100 * float(r.low), 100 * float(r.high)
