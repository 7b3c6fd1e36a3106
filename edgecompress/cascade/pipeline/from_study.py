"""The cascade pipeline as one library call: study -> candidates -> plan -> measured evaluation -> saved folder.

`cascade_from_study` is what `edgecompress cascade` runs (the CLI only prints its result); scripts call it
the same way: `edgecompress.cascade_from_study("demo", "runs/cascade", min_accuracy=0.9)`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.cascade.pipeline.calibrate import FusedPathTimer, refine_plan
from edgecompress.cascade.pipeline.measure import CascadeEvaluation, evaluate_cascade
from edgecompress.cascade.pipeline.study_candidates import Candidate, plan_cascade, stage_modules, study_candidates
from edgecompress.cascade.planning.builder import check_target
from edgecompress.cascade.planning.confidence import check_kind
from edgecompress.cascade.planning.plan import SEED_ALPHA, CascadePlan, combine_weight
from edgecompress.cascade.planning.risk import check_risk, plan_with_risk, split_indices
from edgecompress.cascade.serving.cascade_model import CascadeModel, save_cascade
from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.study.attrs import study_experiment
from edgecompress.study.storage import load_study
from edgecompress.utils import atomic_write_json

__all__ = ["FORMATS", "CascadeBuild", "cascade_from_study", "check_options", "parse_formats"]


@dataclass
class CascadeBuild:
    """What `cascade_from_study` chose, measured and wrote."""

    study_name: str
    out_dir: Path
    plan: CascadePlan
    evaluation: CascadeEvaluation
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


FORMATS = ("onnx", "torchscript")


def check_options(*, kind: str = "margin", combine: str = "last", max_stages: int = 4,
                  min_accuracy: float | None = None, max_latency: float | None = None, samples: int = 1000,
                  risk: float | None = None, delta: float = 0.1, formats: tuple[str, ...] = FORMATS) -> None:
    """ConfigError (one line) for a bad option, before any study is opened or model loaded."""
    check_kind(kind)
    combine_weight(combine, SEED_ALPHA)
    if not 2 <= int(max_stages) <= 8:
        raise ConfigError(f"max_stages must be between 2 and 8, got {max_stages!r}")
    check_target(min_accuracy, max_latency)
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples!r}")
    if risk is not None:
        check_risk(risk, delta)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"unknown cascade format {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")


def parse_formats(text: str) -> tuple[str, ...]:
    """'onnx,torchscript' -> ('onnx', 'torchscript') (validated by check_options)."""
    return tuple(f.strip().lower() for f in text.split(",") if f.strip())


def sliced_candidates(cands: list[Candidate], labels: np.ndarray, idx: np.ndarray) -> list[Candidate]:
    """The candidates with their validation logits (and accuracy) cut to the samples `idx` (the selection part)."""
    return [dc_replace(c, spec=dc_replace(c.spec, val_logits=c.spec.val_logits[idx]),
                       val_accuracy=float(np.mean(c.spec.val_logits[idx].argmax(1) == labels[idx]))) for c in cands]


def _with_preprocessing(fused_model: Any, data: Any, threads: int, n: int = 256) -> tuple[Any, float]:
    """The fused cascade behind the dataset's preprocessing graph (uint8 N x H x W x C images in), and its argmax
    agreement with the fused graph fed by the data loader on the first `n` stored test images."""
    from edgecompress.cascade.serving.fused import INPUT, LOGITS, fused_session
    from edgecompress.evaluators.splits import make_loader
    from edgecompress.export.checks import raw_items
    from edgecompress.runtime.preprocess import with_preprocessing

    if data.preprocess is None:
        raise ConfigError(f"dataset {data.name} states no preprocessing: `preprocess` is not available")
    model = with_preprocessing(fused_model, data.preprocess, data.native_size, layout="NHWC")
    items = raw_items(data.test, n)
    if not items or isinstance(items[0], (str, os.PathLike)):
        raise ConfigError("`preprocess`: the check needs a dataset held in memory (folders: use `export`)")
    raw = fused_session(model, threads).run([LOGITS], {"images": np.stack(items)})[0]
    x = next(iter(make_loader(data.test, data.native_size, len(items))))[0].numpy()
    ref = fused_session(fused_model, threads).run([LOGITS], {INPUT: x})[0]
    agreement = float((raw.argmax(1) == ref.argmax(1)).mean())
    if agreement < 0.99:
        raise EdgeCompressError(f"cascade_uint8.onnx agrees with the loader-fed cascade on {agreement:.1%} of "
                                f"{len(items)} test images (need 99%)")
    return model, agreement


def cascade_from_study(
    study: Any,
    out: str | os.PathLike[str],
    *,
    min_accuracy: float | None = None,
    max_latency: float | None = None,
    storage: Any = None,
    kind: str = "margin",
    combine: str = "last",
    max_stages: int = 4,
    batch: bool = False,
    samples: int = 1000,
    final: str = "auto",
    deployable: bool = True,
    risk: float | None = None,
    delta: float = 0.1,
    calib_fraction: float = 0.5,
    near_front: int = 1,
    formats: tuple[str, ...] = FORMATS,
    preprocess: bool = False,
    refine: bool = True,
) -> CascadeBuild:
    """Choose stages and thresholds on validation logits from the study's front and near-front trials, measure the
    cascade end to end on the test split (as ONE fused ONNX graph, checked against the reference routing), and
    save it to `out` (cascade.onnx and/or TorchScript stages + cascade.yaml, evaluation.json, front.json).
    `max_latency` is in ms. With `risk`, the validation logits are split: the selection part chooses the stages,
    the calibration part (`calib_fraction`) sets thresholds with P(risk > `risk`) <= `delta` (cascade/planning/risk.py).
    `deployable` (default): candidates from the front of measured-latency trials; False also admits estimated ones.
    `refine` (batch 1, ONNX stages): the plan's stages re-priced at their cost inside the fused graph, timed on
    validation images, and planned again (cascade/pipeline/calibrate.py)."""
    from edgecompress.cascade.serving.fused import measure_fused_overheads
    from edgecompress.evaluators.data import load_data

    check_options(kind=kind, combine=combine, max_stages=max_stages, min_accuracy=min_accuracy,
                  max_latency=max_latency, samples=samples, risk=risk, delta=delta, formats=formats)
    st = load_study(study, storage, final=final)
    exp = study_experiment(st)
    cands, labels, notes = study_candidates(st, include_estimated=not deployable, near_front=near_front)
    data = load_data(exp.dataset, exp.seed)
    first = min(c.spec.input_size for c in cands)
    ov = measure_fused_overheads(data.in_chans, data.native_size, first, data.num_classes, kind,
                                 exp.device.batch_size if batch else 1, exp.device.measure_threads)
    sel_idx = cal_idx = None
    if risk is not None:
        sel_idx, cal_idx = split_indices(len(labels), calib_fraction, exp.seed)
    plan_cands = cands if sel_idx is None else sliced_candidates(cands, labels, sel_idx)
    plan_labels = labels if sel_idx is None else labels[sel_idx]
    def plan_fn(cs: list[Candidate]) -> CascadePlan:
        return plan_cascade(cs, plan_labels, min_accuracy=min_accuracy, max_latency=max_latency, kind=kind,
                            combine=combine, max_stages=max_stages, batch=batch, single_from=plan_cands,
                            routing_overhead_ms=ov["routing_overhead_ms"], call_overhead_ms=ov["call_overhead_ms"])

    refinement = None
    if refine and not batch and exp.device.backend == "onnxruntime":
        with tempfile.TemporaryDirectory(prefix="edgecompress-refine-") as tmp:
            plan, refinement = refine_plan(plan_fn, plan_cands, FusedPathTimer(cands, exp, data, Path(tmp)))
    else:
        plan = plan_fn(plan_cands)
    control = None
    if risk is not None and len(plan.stages) > 1:
        by = {c.spec.name: c.spec.val_logits for c in cands}
        zs = [by[n] for n in plan.names]
        plan, control = plan_with_risk(plan, ([z[sel_idx] for z in zs], labels[sel_idx]),
                                       ([z[cal_idx] for z in zs], labels[cal_idx]), risk, delta)
    elif risk is not None:
        notes.append("one model alone meets the target: no thresholds to control (risk 0)")
    if len(plan.stages) == 1:
        notes.append(f"one model alone ({plan.names[0]}) meets the target: no cascade beats it")
    ev, fused_model = evaluate_cascade(st, plan, cands, labels, exp, data, samples=samples, notes=notes)
    ev.fused_overheads = ov
    if refinement is not None:
        ev.refinement = refinement.to_dict()
    if control is not None:
        ev.risk = control.to_dict()
    out_dir = Path(out)
    by_name = {c.spec.name: c for c in cands}
    if "torchscript" in formats:  # cascade.yaml + TorchScript stages: the reference and torch form
        torch_cascade = CascadeModel(stage_modules(by_name, plan.names, exp, data, deployed=False), plan,
                                     in_chans=data.in_chans)
        save_cascade(torch_cascade, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "onnx" in formats and fused_model is not None:  # the served artefact, checked on the test split
        import onnx

        onnx.save(fused_model, str(out_dir / "cascade.onnx"))
        if preprocess:  # uint8 images in (the loader's steps in the graph), checked on stored test images
            raw_model, agreement = _with_preprocessing(fused_model, data, exp.device.threads)
            onnx.save(raw_model, str(out_dir / "cascade_uint8.onnx"))
            ev.fused_check["uint8_argmax_agreement"] = agreement
    atomic_write_json(out_dir / "evaluation.json", ev.to_dict())
    atomic_write_json(out_dir / "front.json", ev.front)
    files = sorted(p.name for p in out_dir.iterdir())
    return CascadeBuild(st.study_name, out_dir, plan, ev, cands, list(ev.notes), files)
