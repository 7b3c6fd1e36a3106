"""Benchmark: a dynamic cascade from a >= 40-trial Fashion-MNIST study vs the most accurate single model.

Plans on validation logits (target: validation accuracy within 0.2 pp of the best single model), then
measures on the test split: accuracy, escalation, and mean latency per call at batch 1 and at the serving
batch (same loop for cascade and single model, deploy forms as in the study). Also the seed's rule
(2 stages, margin, out1 + 1.6 out2) at equal validation accuracy.

Usage: .venv/bin/python bench/cascade.py [--study bench-cascade] [--build] [--trials 40]
       [--config configs/fmnist-quick.yaml] [--out bench/results/cascade.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecompress.cascade.evaluate import evaluate_cascade, plan_cascade, study_candidates  # noqa: E402
from edgecompress.deploy.latency import cpu_name  # noqa: E402
from edgecompress.evaluators.data import load_data  # noqa: E402
from edgecompress.results import load_study  # noqa: E402
from edgecompress.spaces import parse_experiment  # noqa: E402
from edgecompress.utils import atomic_write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="bench-cascade")
    ap.add_argument("--config", default="configs/fmnist-quick.yaml")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--build", action="store_true", help="run (or resume) the search first")
    ap.add_argument("--samples", type=int, default=2000, help="test images timed one by one")
    ap.add_argument("--combine", default="last")
    ap.add_argument("--out", default="bench/results/cascade.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.build:
        subprocess.run([sys.executable, "-m", "edgecompress.cli", "search", args.config, "--study", args.study,
                        "--trials", str(args.trials), "--no-progress"], check=True)
    study = load_study(args.study)
    exp = parse_experiment(study.user_attrs["experiment"])
    data = load_data(exp.dataset, exp.seed)
    cands, labels, notes = study_candidates(study)
    n_complete = sum(1 for t in study.trials if t.state.name == "COMPLETE")
    results = {}
    for mode, batch in (("b1", False), ("batch", True)):
        plan = plan_cascade(cands, labels, batch=batch, combine=args.combine)
        ev, _ = evaluate_cascade(study, plan, cands, labels, exp, data, samples=args.samples, notes=notes)
        results[mode] = ev.to_dict()
    b1, bb = results["b1"], results["batch"]
    seed = b1["seed_rule"]
    seed_red = seed.get("latency_reduction_vs_best_single")
    out = {
        "latency_reduction_b1": b1["latency_reduction_b1"],
        "latency_reduction_batch": bb["latency_reduction_batch"],
        "accuracy_delta_pp": b1["accuracy_delta_pp"],
        "accuracy_delta_pp_batch_plan": bb["accuracy_delta_pp"],
        "prediction_error": b1["prediction_error"],
        "predicted_latency_ms": b1["predicted_latency_ms"],
        "measured_latency_b1_ms": b1["measured_latency_b1_ms"],
        "best_single": b1["best_single"],
        "seed_rule_latency_reduction": seed_red,
        "seed_rule": seed,
        "stages_b1_plan": b1["stage_trials"],
        "stages_batch_plan": bb["stage_trials"],
        "escalation_rates_b1_plan": b1["test_escalation_rates"],
        "cascade_b1_plan": b1,
        "cascade_batch_plan": bb,
        "study": args.study,
        "study_trials_complete": n_complete,
        "candidates_on_front": len(cands),
        "backend": exp.device.backend,
        "threads": exp.device.threads,
        "batch_size": exp.device.batch_size,
        "device": f"cpu: {cpu_name()} ({os.cpu_count()} cores, {exp.device.threads} threads)",
        "torch_version": torch.__version__,
        "command": " ".join(["python", *sys.argv]),
        "seconds": round(time.perf_counter() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_json(args.out, out)
    print(f"b1: {out['latency_reduction_b1']:+.1%} latency, {out['accuracy_delta_pp']:+.2f} pp; "
          f"batch: {out['latency_reduction_batch']:+.1%}; prediction error {out['prediction_error']:.1%} -> {args.out}")


if __name__ == "__main__":
    main()
