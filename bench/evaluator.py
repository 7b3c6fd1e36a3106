"""Benchmark of the evaluator's measurements (issue 4).

- latency repeat CV: 5 independent latency measurements (median each) of 3 models; CV across the 5
- int8 vs fp32 speed-up of the base model on the deploy backend at batch 64 (and batch 1)
- Spearman correlation of MACs vs measured latency over 20 random configs (why we measure)
- from a finished study (--study): the fastest model within 0.5 pp of the base accuracy, and its speed-up

Usage: .venv/bin/python bench/evaluator.py [--config configs/fmnist-quick.yaml] [--study demo]
       [--device cpu|cuda] [--out bench/results/evaluator.json]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecompress.evaluators.compress import compress_model  # noqa: E402
from edgecompress.evaluators.cost import count_costs  # noqa: E402
from edgecompress.evaluators.evaluator import CompressionEvaluator  # noqa: E402
from edgecompress.runtime.latency import device_name  # noqa: E402
from edgecompress.spaces import CompressionConfig, load_experiment  # noqa: E402
from edgecompress.utils import atomic_write_json  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/fmnist-quick.yaml")
    ap.add_argument("--study", default=None, help="finished study to read the >=3x model from")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: the config's)")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--configs", type=int, default=20)
    ap.add_argument("--out", default="bench/results/evaluator.json")
    args = ap.parse_args()
    overrides = {}
    if args.device:
        overrides["device.device"] = args.device
    if args.backend:
        overrides["device.backend"] = args.backend
    exp = load_experiment(args.config, overrides)
    ev = CompressionEvaluator(exp)
    data, base = ev.data, ev.base
    torch.set_num_threads(exp.device.threads)
    native = data.native_size
    t_start = time.perf_counter()

    def deployed(cfg: CompressionConfig, precision: str):
        size = cfg.input_size(native)
        model, _ = compress_model(base.model, cfg, torch.randn(1, data.in_chans, size, size))
        return model, ev._deploy(model, size, precision), size

    # 1. repeat CV across 5 measurements for 3 models
    models = {"base fp32": (CompressionConfig(), "fp32"),
              "prune 0.5 @ 0.786 fp32": (CompressionConfig(prune=0.5, resolution=0.786, round_to=4), "fp32"),
              "base int8": (CompressionConfig(w_bits=8, a_bits=8), "int8")}
    cv_rows = {}
    for name, (cfg, prec) in models.items():
        _, dep, size = deployed(cfg, prec)
        meds, meds_b = [], []
        for _ in range(5):
            m = ev.measure_latency(dep, size)
            meds.append(m["latency_ms"])
            meds_b.append(m["latency_batch_ms"])
        cv_rows[name] = {"medians_b1_ms": meds, "cv_b1": statistics.pstdev(meds) / statistics.fmean(meds),
                         "medians_batch_ms": meds_b,
                         "cv_batch": statistics.pstdev(meds_b) / statistics.fmean(meds_b),
                         "precision": dep.precision}
    latency_cv = max(max(r["cv_b1"], r["cv_batch"]) for r in cv_rows.values())

    # 2. int8 vs fp32 of the base model
    fp32 = cv_rows["base fp32"]
    int8 = cv_rows["base int8"]
    speed_b64 = statistics.median(fp32["medians_batch_ms"]) / statistics.median(int8["medians_batch_ms"])
    speed_b1 = statistics.median(fp32["medians_b1_ms"]) / statistics.median(int8["medians_b1_ms"])

    # 3. MACs vs measured latency over random configs
    rng = random.Random(0)
    rows = []
    for _ in range(args.configs):
        cfg = CompressionConfig(prune=rng.choice([0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75]),
                                resolution=rng.choice([0.5, 0.643, 0.786, 1.0]),
                                w_bits=rng.choice([32, 8]), a_bits=32, round_to=4)
        cfg = cfg.model_copy(update={"a_bits": cfg.w_bits})
        model, dep, size = deployed(cfg, "int8" if cfg.w_bits == 8 else "fp32")
        m = ev.measure_latency(dep, size)
        macs = count_costs(model, (1, data.in_chans, size, size))["macs"]
        rows.append({"config": cfg.to_dict(), "macs": macs, "latency_ms": m["latency_ms"],
                     "latency_batch_ms": m["latency_batch_ms"]})
    rho_b1 = spearman([r["macs"] for r in rows], [r["latency_ms"] for r in rows])
    rho_bb = spearman([r["macs"] for r in rows], [r["latency_batch_ms"] for r in rows])

    # 4. >= 3x faster within 0.5 pp of the base accuracy, from a study
    fast = None
    if args.study:
        from edgecompress.study import load_study, study_to_frame

        df = study_to_frame(load_study(args.study))
        df = df[(df["state"] == "COMPLETE") & (df["latency_source"] == "measured")]
        base_rows = df[df["cfg_prune"].eq(0) & df["cfg_resolution"].eq(1.0) & df["cfg_w_bits"].eq(32)]
        if not base_rows.empty:
            b = base_rows.iloc[0]
            ok = df[df["accuracy"] >= b["accuracy"] - 0.005].sort_values("latency_ms")
            if not ok.empty:
                f = ok.iloc[0]
                fast = {"trial": int(f["number"]), "config": f["config"], "accuracy": float(f["accuracy"]),
                        "test_accuracy": float(f.get("test_accuracy", float("nan"))),
                        "latency_ms": float(f["latency_ms"]), "base_accuracy": float(b["accuracy"]),
                        "base_latency_ms": float(b["latency_ms"]),
                        "speedup": float(b["latency_ms"] / f["latency_ms"]),
                        "meets_3x": bool(b["latency_ms"] / f["latency_ms"] >= 3)}

    dev = ev.device
    result = {
        "latency_cv": latency_cv,
        "int8_speedup": speed_b64,
        "int8_speedup_b1": speed_b1,
        "macs_latency_spearman": rho_b1,
        "macs_latency_spearman_batch": rho_bb,
        "cv_per_model": cv_rows,
        "random_configs": rows,
        "fast_within_0p5pp": fast,
        "backend": exp.device.backend,
        "batch_size": exp.device.batch_size,
        "threads": exp.device.threads,
        "device": f"{dev}: {device_name(dev)} ({os.cpu_count()} cores visible)",
        "torch_version": torch.__version__,
        "command": " ".join(["python", *sys.argv]),
        "seconds": round(time.perf_counter() - t_start, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_json(args.out, result)
    print(f"latency_cv {latency_cv:.4f}  int8_speedup(b{exp.device.batch_size}) {speed_b64:.2f}x  "
          f"b1 {speed_b1:.2f}x  spearman {rho_b1:.3f} (batch {rho_bb:.3f}) -> {args.out}")


if __name__ == "__main__":
    main()
