"""Benchmark: the fused ONNX cascade from its own finalized Fashion-MNIST study vs the most accurate single
finalized model, both measured in the same run on the same runtime (ONNX Runtime, the study's threads).

Builds (with --build) a >= 40-trial search study and finalizes its most promising configs into
<study>-final; plans on validation logits (target: validation accuracy at least the best single model's,
--tolerance-pp; the fused graph's measured per-call and routing overheads in the latency model; at batch 1 the
stages re-priced at their cost inside the fused graph, timed on validation images, cascade/pipeline/calibrate.py), then
serves the plan as ONE ONNX graph (checked against the reference routing on the test split) and measures test
accuracy, the paired accuracy interval, mean/p90/p99 latency per call at batch 1 and at the serving batch.
Also: the seed's rule (2 stages, margin, out1 + 1.6 out2) at equal validation accuracy, and (--risk) a
risk-controlled plan. `--heavy` runs the compute-heavier setting (bench/fmnist-heavy.yaml: a 3x wider
ResNet-8, 52 proxy trials, 5 finalized for 1 epoch) into bench/results/cascade-heavy.json.

Usage: .venv/bin/python bench/cascade.py --build [--trials 40 --finalize 4 --finalize-epochs 1]
       .venv/bin/python bench/cascade.py --build --heavy
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecompress.cascade.pipeline.calibrate import FusedPathTimer, refine_plan  # noqa: E402
from edgecompress.cascade.pipeline.from_study import sliced_candidates  # noqa: E402
from edgecompress.cascade.pipeline.measure import evaluate_cascade, per_call_ms
from edgecompress.cascade.pipeline.study_candidates import plan_cascade, stage_modules, study_candidates
from edgecompress.cascade.planning.risk import plan_with_risk, split_indices  # noqa: E402
from edgecompress.cascade.serving.fused import measure_fused_overheads  # noqa: E402
from edgecompress.evaluators.data import load_data  # noqa: E402
from edgecompress.export.retarget import remeasured_name  # noqa: E402
from edgecompress.runtime.cpu_features import cpu_flags  # noqa: E402
from edgecompress.runtime.latency import cpu_name, latency_lock  # noqa: E402
from edgecompress.spaces import parse_experiment  # noqa: E402
from edgecompress.study import load_study  # noqa: E402
from edgecompress.utils import atomic_write_json, runs_dir  # noqa: E402

# 52 trials: about one in five proposes prune 0.875, which empties conv1 (a failed trial), so >= 40 complete
HEAVY = {"study": "bench-cascade15-heavy", "config": "bench/fmnist-heavy.yaml", "trials": 52, "finalize": 5,
         "out": "bench/results/cascade-heavy.json"}

def loadavg() -> float:
    return round(os.getloadavg()[0], 2)

def device() -> str:
    isa = sorted(f for f in cpu_flags() if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "sse4_2"})
    return f"cpu: {cpu_name()} ({os.cpu_count()} cores; {' '.join(isa)})"

def drift_corrected_error(ev: dict[str, Any], measured_key: str, study_key: str, cands: list | None = None) -> float:
    """|predicted x (single measured now / single in the study) - measured| / measured."""
    single = ev["best_single"]
    study_ms = single.get(study_key)
    if study_ms is None and cands is not None:
        study_ms = next((c.spec.latency_batch_ms for c in cands if c.number == single["trial"]), None)
    if not study_ms:
        return float("nan")
    ratio = single[measured_key] / study_ms
    measured = ev[measured_key]
    return abs(ev["predicted_latency_ms"] * ratio - measured) / measured

def fastest_single(cands: list, tol_pp: float, exp: Any, data: Any, samples: int) -> dict[str, Any]:
    """The fastest single finalized model within `tol_pp` validation accuracy of the most accurate one, timed now
    with evaluate_cascade's loop (per_call_ms) (batch 1 one image at a time, then serving batches): the single model a
    user would ship without a cascade at that tolerance."""
    from edgecompress.cascade.serving.lean import deployed_stage, resize_array
    from edgecompress.evaluators.result import ARTEFACT_FILES
    from edgecompress.evaluators.splits import make_loader

    top = max(c.val_accuracy for c in cands)
    f = min((c for c in cands if c.val_accuracy >= top - tol_pp / 100), key=lambda c: c.spec.latency_ms)
    run = deployed_stage(stage_modules({f.spec.name: f}, [f.spec.name], exp, data)[0])
    size = f.spec.input_size
    test = np.load(f.artefact_dir / ARTEFACT_FILES["test_logits"])
    labels = np.load(f.artefact_dir / ARTEFACT_FILES["test_labels"])

    def single_fn(a: np.ndarray) -> np.ndarray:
        return run(resize_array(a, size))

    bs = exp.device.batch_size
    xs = [x.numpy() for x, _ in make_loader(data.test, data.native_size, 1, limit=samples)]
    xb = [x.numpy() for x, _ in make_loader(data.test, data.native_size, bs, limit=max(samples, 4 * bs))]
    with latency_lock():
        b1 = per_call_ms(single_fn, xs)[0]
        bb = per_call_ms(single_fn, [x for x in xb if len(x) == bs], warmup=3)[0]
    return {"trial": f.number, "precision": f.precision, "val_accuracy": f.val_accuracy,
            "test_accuracy": float((test.argmax(1) == labels).mean()), "measured_latency_b1_ms": b1,
            "measured_latency_batch_ms": bb, "tolerance_pp": tol_pp}


def run_plan(st: Any, plan: Any, cands: list, labels: np.ndarray, exp: Any, data: Any, samples: int,
             notes: list[str]) -> dict[str, Any]:
    ev, _ = evaluate_cascade(st, plan, cands, labels, exp, data, samples=samples, notes=notes)
    return ev.to_dict()

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="bench-cascade15")
    ap.add_argument("--config", default="configs/fmnist-quick.yaml")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--finalize", type=int, default=4, help="configs finalized into <study>-final")
    ap.add_argument("--finalize-epochs", type=int, default=1)
    ap.add_argument("--build", action="store_true", help="run (or resume) the search and finalize first")
    ap.add_argument("--heavy", action="store_true", help="the compute-heavier setting (bench/fmnist-heavy.yaml)")
    ap.add_argument("--samples", type=int, default=2000, help="test images timed one by one")
    ap.add_argument("--near-front", type=int, default=1)
    ap.add_argument("--tolerance-pp", type=float, default=0.0,
                    help="plan target: validation accuracy at most this far below the best single model's (0: the "
                         "goal's 0.2 pp is left to test-split noise, not spent on validation)")
    ap.add_argument("--no-refine", action="store_true",
                    help="price stages at their stand-alone latencies "
                         "(no in-cascade timing: cascade/pipeline/calibrate.py)")
    ap.add_argument("--combine", default="last", choices=["last", "sum", "seed_alpha"])
    ap.add_argument("--risk", type=float, default=0.01, help="also a plan with P(risk > RISK) <= 0.1; 0: skip")
    ap.add_argument("--final", default="auto", choices=["auto", "final", "proxy"],
                    help="finalized models (auto: when <study>-final has complete trials) or the search's")
    ap.add_argument("--remeasured", action="store_true",
                    help="plan on <study>-final-remeasured (`edgecompress remeasure` run on a quiet machine)")
    ap.add_argument("--out", default="bench/results/cascade.json")
    args = ap.parse_args()
    if args.heavy:
        for k, v in HEAVY.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    t0, load0 = time.perf_counter(), loadavg()
    if args.build:
        cli = [sys.executable, "-m", "edgecompress.cli"]
        subprocess.run([*cli, "search", args.config, "--study", args.study, "--trials", str(args.trials),
                        "--no-progress"], check=True)
        # deployable: the finalized configs have measured latencies (4-bit estimates cannot be cascade stages)
        subprocess.run([*cli, "finalize", args.study, "--top", str(args.finalize), "--epochs",
                        str(args.finalize_epochs), "--deployable", "--no-progress"], check=True)
    build_s = time.perf_counter() - t0
    search = load_study(args.study, final="proxy")
    st = load_study(args.study, final=args.final)
    if args.remeasured:  # the same trials and artefacts, latencies re-timed quietly, in the same storage
        st = load_study(remeasured_name(st.study_name), storage=str(runs_dir() / f"{args.study}.db"), final="proxy")
    exp = parse_experiment(st.user_attrs["experiment"])
    data = load_data(exp.dataset, exp.seed)
    cands, labels, notes = study_candidates(st, near_front=args.near_front)
    first = min(c.spec.input_size for c in cands)
    results: dict[str, Any] = {}
    overheads = {}
    target = max(c.val_accuracy for c in cands) - args.tolerance_pp / 100
    refinement: dict[str, Any] = {}
    for mode, batch in (("b1", False), ("batch", True)):
        ov = measure_fused_overheads(data.in_chans, data.native_size, first, data.num_classes, "margin",
                                     exp.device.batch_size if batch else 1, exp.device.measure_threads)
        overheads[mode] = ov
        def plan_fn(cs: list, batch: bool = batch, ov: dict = ov) -> Any:
            return plan_cascade(cs, labels, batch=batch, routing_overhead_ms=ov["routing_overhead_ms"],
                                call_overhead_ms=ov["call_overhead_ms"], min_accuracy=target, combine=args.combine,
                                single_from=cands)

        if batch or args.no_refine:
            plan = plan_fn(cands)
        else:  # stages re-priced at their cost inside the fused graph, timed on validation images
            with tempfile.TemporaryDirectory(prefix="bench-cascade-") as tmp:
                plan, ref = refine_plan(plan_fn, cands, FusedPathTimer(cands, exp, data, Path(tmp)))
            refinement = ref.to_dict()
        results[mode] = run_plan(st, plan, cands, labels, exp, data, args.samples, list(notes))
    b1, bb = results["b1"], results["batch"]
    risk: dict[str, Any] = {}
    if args.risk > 0:
        sel, cal = split_indices(len(labels), 0.5, exp.seed)
        sc = sliced_candidates(cands, labels, sel)
        ov = overheads["b1"]
        base = plan_cascade(sc, labels[sel], routing_overhead_ms=ov["routing_overhead_ms"],
                            call_overhead_ms=ov["call_overhead_ms"])
        if len(base.stages) > 1:
            by = {c.spec.name: c.spec.val_logits for c in cands}
            zs = [by[n] for n in base.names]
            rplan, rc = plan_with_risk(base, ([z[sel] for z in zs], labels[sel]), ([z[cal] for z in zs], labels[cal]),
                                       args.risk, 0.1)
            ev = run_plan(st, rplan, cands, labels, exp, data, args.samples, list(notes))
            risk = {"guarantee": rc.to_dict(), "test_accuracy": ev["test_accuracy"],
                    "accuracy_delta_pp": ev["accuracy_delta_pp"], "latency_reduction_b1": ev["latency_reduction_b1"],
                    "test_escalation_rates": ev["test_escalation_rates"], "stage_trials": ev["stage_trials"]}
        else:
            risk = {"note": "one model alone meets the target on the selection part: nothing to control"}
    fast = fastest_single(cands, 0.2, exp, data, args.samples)
    fast.update({"cascade_latency_reduction_b1": 1 - b1["measured_latency_b1_ms"] / fast["measured_latency_b1_ms"],
                 "cascade_latency_reduction_batch": 1 - bb["measured_latency_batch_ms"]
                 / fast["measured_latency_batch_ms"],
                 "cascade_accuracy_delta_pp": 100 * (b1["test_accuracy"] - fast["test_accuracy"])})
    seed = b1["seed_rule"]
    pct = b1["latency_percentiles_ms"]
    n_search = sum(1 for t in search.trials if t.state.name == "COMPLETE")
    n_final = sum(1 for t in st.trials if t.state.name == "COMPLETE") if "-final" in st.study_name else 0
    out = {
        "latency_reduction_b1": b1["latency_reduction_b1"],
        "latency_reduction_batch": bb["latency_reduction_batch"],
        "accuracy_delta_pp": b1["accuracy_delta_pp"],
        "accuracy_delta_interval_pp": b1["accuracy_delta_interval_pp"],
        "accuracy_delta_pp_batch_plan": bb["accuracy_delta_pp"],
        "accuracy_delta_interval_pp_batch_plan": bb["accuracy_delta_interval_pp"],
        "prediction_error": b1["prediction_error"],
        "prediction_error_batch": bb["prediction_error"],
        # the study measured its models earlier, at another load: scale the prediction by the best single
        # model's measured-now / study latency ratio (the drift correction of runtime/latency_paired.py's protocol)
        "prediction_error_drift_corrected": drift_corrected_error(b1, "measured_latency_b1_ms", "latency_ms"),
        "prediction_error_batch_drift_corrected": drift_corrected_error(bb, "measured_latency_batch_ms",
                                                                        "latency_batch_ms", cands),
        "fused": bool(b1["fused"] and bb["fused"]),
        "fused_check": b1["fused_check"],
        "p90_latency_b1_ms": pct.get("cascade_b1_p90"), "p99_latency_b1_ms": pct.get("cascade_b1_p99"),
        "single_p90_latency_b1_ms": pct.get("single_b1_p90"), "single_p99_latency_b1_ms": pct.get("single_b1_p99"),
        "p90_latency_batch_ms": bb["latency_percentiles_ms"].get("cascade_batch_p90"),
        "p99_latency_batch_ms": bb["latency_percentiles_ms"].get("cascade_batch_p99"),
        "predicted_latency_ms": b1["predicted_latency_ms"],
        "measured_latency_b1_ms": b1["measured_latency_b1_ms"],
        "measured_latency_batch_ms": bb["measured_latency_batch_ms"],
        "best_single": b1["best_single"],
        # what a user would ship alone at a 0.2 pp validation tolerance, against the same (batch-1 plan) cascade
        "fastest_single_within_0p2": fast,
        "seed_rule_latency_reduction": seed.get("latency_reduction_vs_best_single"),
        "seed_rule": seed,
        "risk_controlled": risk,
        "fused_overheads": overheads,
        "refinement_b1": refinement, "tolerance_pp": args.tolerance_pp, "combine": args.combine,
        "goals": {"latency_reduction_b1>=0.4": b1["latency_reduction_b1"] >= 0.4,
                  "latency_reduction_batch>=0.4": bb["latency_reduction_batch"] >= 0.4,
                  "accuracy_delta_pp>=-0.2": b1["accuracy_delta_pp"] >= -0.2,
                  "prediction_error<=0.1": b1["prediction_error"] <= 0.1},
        "stages_b1_plan": b1["stage_trials"], "stages_batch_plan": bb["stage_trials"],
        "escalation_rates_b1_plan": b1["test_escalation_rates"],
        "cascade_b1_plan": {k: v for k, v in b1.items() if k != "front"},
        "cascade_batch_plan": {k: v for k, v in bb.items() if k != "front"},
        "study": st.study_name, "models": "finalized" if "-final" in st.study_name else "search (proxy)",
        "search_trials_complete": n_search, "finalized_trials_complete": n_final,
        "candidates": len(cands), "near_front": args.near_front,
        "backend": exp.device.backend, "threads": exp.device.threads,
        "latency_threads": exp.device.measure_threads, "batch_size": exp.device.batch_size,
        "device": device(), "torch_version": torch.__version__,
        "loadavg_1min": {"start": load0, "end": loadavg()},
        "notes": [f"machine shared with other jobs: 1-min loadavg {load0} at start, {loadavg()} at end on "
                  f"{os.cpu_count()} cores; latencies are inflated and noisy accordingly"],
        "command": " ".join(["python", *sys.argv]),
        "build_seconds": round(build_s, 1), "seconds": round(time.perf_counter() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_json(args.out, out)
    print(f"b1: {out['latency_reduction_b1']:+.1%} latency, {out['accuracy_delta_pp']:+.2f} pp "
          f"[{b1['accuracy_delta_interval_pp'][0]:+.2f}, {b1['accuracy_delta_interval_pp'][1]:+.2f}]; batch: "
          f"{out['latency_reduction_batch']:+.1%}; prediction error {out['prediction_error']:.1%} -> {args.out}")

if __name__ == "__main__":
    main()
