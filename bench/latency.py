"""Benchmark: latency you can trust across processes and beside a busy worker (issue 13).

Three models (a ResNet-8 on Fashion-MNIST shapes, untrained weights: the base fp32, a pruned one and the
base int8), measured with the search's protocol (CompressionEvaluator.measure_latency: interleaved with the
uncompressed reference, drift-corrected by its calibrated median, under the machine's compute lock):

- spread: each model measured in `--processes` (10) separate processes, one after the other, sharing one
  runs folder as a search's workers do (so one calibration of the reference). Per model
  spread_abs = max/min - 1 of the absolute medians (what a fresh process measured before) and
  spread_ratio = the same for the drift-corrected value (what the search and the fronts use).
  Top-level figures are the worst model at batch 1; batch figures are beside them.
- neighbour: a worker training beside the measurement (the real train_model loop, `threads` threads),
  `--rounds` rounds of three windows in alternating order: quiet (neighbour stopped), with the exclusion
  (the neighbour takes part in the compute lock) and without (a neighbour that does not take part, as with
  device.exclusive_measurement: false). neighbour_inflation = the worst model's median over rounds of
  (latency beside the neighbour / the same round's quiet latency) - 1, drift-corrected value; the
  absolute value's figures and the neighbour's CPU use in each window are in `neighbour`.

Figures from a loaded machine are not final: `machine` records the load while it ran.
Usage: .venv/bin/python bench/latency.py [--config configs/fmnist-quick.yaml] [--processes 10] [--rounds 3]
       [--out bench/results/latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecompress.evaluators.base_model import BaseModel, build_model  # noqa: E402
from edgecompress.evaluators.compress import compress_model  # noqa: E402
from edgecompress.evaluators.evaluator import CompressionEvaluator  # noqa: E402
from edgecompress.runtime.cpu_features import cpu_flags, has_vnni  # noqa: E402
from edgecompress.runtime.latency import cpu_name, latency_lock  # noqa: E402
from edgecompress.spaces import CompressionConfig, ExperimentConfig, load_experiment  # noqa: E402
from edgecompress.testing import process_cpu_seconds, stop_process  # noqa: E402
from edgecompress.utils import atomic_write_json  # noqa: E402

MODELS = {
    "base fp32": (CompressionConfig(), "fp32"),
    "prune 0.5 fp32": (CompressionConfig(prune=0.5, round_to=4), "fp32"),
    "base int8": (CompressionConfig(w_bits=8, a_bits=8), "int8"),
}
KEYS = ("latency_ms", "latency_abs_ms", "latency_ratio", "latency_ref_ms", "latency_ref_study_ms",
        "latency_ci_low_ms", "latency_ci_high_ms", "latency_repeats", "latency_seconds", "latency_load",
        "latency_busy_cpus", "latency_batch_ms", "latency_batch_abs_ms", "latency_batch_ratio",
        "latency_batch_ref_ms", "latency_batch_ref_study_ms", "latency_attempts", "latency_ref_deviation",
        "latency_batch_attempts", "latency_disturbed")
DATA_SUBSET = {"dataset.train_subset": 512, "dataset.val_subset": 64, "dataset.test_subset": 64}


THREADS: dict[str, int] = {}  # --threads: device.latency_threads for every measurement (children get it too)


def experiment(config: str, exclusive: bool = True) -> ExperimentConfig:
    over = {**DATA_SUBSET, "device.exclusive_measurement": exclusive}
    if THREADS:
        over["device.latency_threads"] = THREADS["n"]
    return load_experiment(config, over)


def evaluator(exp: ExperimentConfig, data: Any = None) -> CompressionEvaluator:
    """The real evaluator with an untrained base (weights do not change latency; nothing is trained)."""
    ev = CompressionEvaluator(exp, data=data)
    torch.manual_seed(0)
    net = build_model(exp, ev.data).eval()
    ev._base = BaseModel(net, {}, "bench-untrained", Path("unused"), reused=True)
    return ev


def deployed(ev: CompressionEvaluator) -> dict[str, tuple[Any, int]]:
    out = {}
    native = ev.data.native_size
    for name, (cfg, precision) in MODELS.items():
        size = cfg.input_size(native)
        model, _ = compress_model(ev.base.model, cfg, torch.randn(1, ev.data.in_chans, size, size))
        out[name] = (ev._deploy(model, size, precision), size)
    return out


def measure(ev: CompressionEvaluator, dep: Any, size: int) -> dict[str, Any]:
    m = ev.measure_latency(dep, size)
    return {k: m.get(k) for k in KEYS}


def child(config: str, out: str) -> None:
    """One fresh process: the reference (calibrated once for all processes) and the three models."""
    exp = experiment(config)
    torch.set_num_threads(exp.device.threads)
    ev = evaluator(exp)
    deps = deployed(ev)
    atomic_write_json(out, {name: measure(ev, dep, size) for name, (dep, size) in deps.items()})


def spread(xs: list[float]) -> float:
    return max(xs) / min(xs) - 1


def run_processes(config: str, n: int, runs: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            out = Path(tmp) / f"p{i}.json"
            env = {**os.environ, "EDGECOMPRESS_RUNS": runs, "PYTHONPATH": str(ROOT)}
            cmd = [sys.executable, __file__, "--config", config, "--child", str(out)]
            cmd += ["--threads", str(THREADS["n"])] if THREADS else []
            subprocess.run(cmd, env=env, check=True)
            rows.append(json.loads(out.read_text()))
            print(f"process {i + 1}/{n}: " + ", ".join(
                f"{k} {r['latency_abs_ms']:.4g} abs / {r['latency_ms']:.4g} corrected ms" for k, r in rows[-1].items()))
    per_model = {}
    for name in MODELS:
        col = {k: [r[name][k] for r in rows] for k in KEYS}
        per_model[name] = {
            "spread_abs": spread(col["latency_abs_ms"]), "spread_ratio": spread(col["latency_ms"]),
            "spread_abs_batch": spread(col["latency_batch_abs_ms"]),
            "spread_ratio_batch": spread(col["latency_batch_ms"]),
            "spread_reference_in_window": spread(col["latency_ref_ms"]),
            "per_process": col,
        }
    return per_model


class Neighbours:
    """Two training workers beside the measurement: one that takes part in the compute lock, one that
    does not; each is stopped (SIGSTOP, only while this process holds the lock) unless its window runs."""

    def __init__(self, threads: int, runs: str, tmp: str) -> None:
        env = {**os.environ, "EDGECOMPRESS_RUNS": runs, "PYTHONPATH": str(ROOT)}
        self.procs: dict[str, subprocess.Popen] = {}
        for kind in ("lock", "nolock"):
            ready = Path(tmp) / f"{kind}.ready"
            self.procs[kind] = subprocess.Popen(
                [sys.executable, "-m", "edgecompress.testing", "neighbour", str(ready), "3600", kind, str(threads)],
                env=env, cwd=ROOT)
            deadline = time.time() + 120
            while not ready.exists():
                if self.procs[kind].poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the {kind} neighbour never trained a step")
                time.sleep(0.1)
        self.active: str | None = None

    def set(self, mode: str, settle: float = 1.0) -> None:
        """mode: quiet (both stopped), with (the lock-taking one runs), without (the other one runs)."""
        with latency_lock():  # the lock-taking neighbour holds no step now: safe to stop it
            for p in self.procs.values():
                stop_process(p.pid)  # stopped before the lock is released, not only signalled
        self.active = {"quiet": None, "with": "lock", "without": "nolock"}[mode]
        if self.active:
            self.procs[self.active].send_signal(signal.SIGCONT)
            time.sleep(settle)

    def cpu(self) -> float:
        return process_cpu_seconds(self.procs[self.active].pid) if self.active else 0.0

    def close(self) -> None:
        for p in self.procs.values():
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait(timeout=30)


def run_neighbour(config: str, rounds: int, runs: str) -> dict[str, Any]:
    os.environ["EDGECOMPRESS_RUNS"] = runs
    quiet = evaluator(experiment(config))
    ev = {"quiet": quiet, "with": quiet,
          "without": evaluator(experiment(config, exclusive=False), quiet.data)}  # records latency_exclusive
    threads = ev["quiet"].exp.device.threads
    torch.set_num_threads(threads)
    deps = deployed(ev["quiet"])
    ev["without"]._base = quiet.base
    ev["without"]._reference = quiet.latency_reference()  # one reference deployment, one calibration
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {m: {name: [] for name in MODELS} for m in ev}
    with tempfile.TemporaryDirectory() as tmp:
        nb = Neighbours(threads, runs, tmp)
        try:
            for r in range(rounds):
                for mode in ("quiet", "with", "without")[:: 1 if r % 2 == 0 else -1]:
                    nb.set(mode)
                    for name, (dep, size) in deps.items():
                        c0, t0 = nb.cpu(), time.perf_counter()
                        m = measure(ev[mode], dep, size)
                        m["neighbour_cpus"] = (nb.cpu() - c0) / (time.perf_counter() - t0)
                        rows[mode][name].append(m)
                print(f"round {r + 1}/{rounds}: " + ", ".join(
                    f"{mode} {rows[mode]['base int8'][-1]['latency_ms']:.4g}" for mode in rows) + " ms (base int8)")
        finally:
            nb.close()

    def inflation(mode: str, name: str, key: str) -> float:
        return statistics.median(b[key] / q[key] - 1 for b, q in zip(rows[mode][name], rows["quiet"][name]))

    per_model = {name: {
        "inflation_with_exclusion": inflation("with", name, "latency_ms"),
        "inflation_without_exclusion": inflation("without", name, "latency_ms"),
        "inflation_abs_with_exclusion": inflation("with", name, "latency_abs_ms"),
        "inflation_abs_without_exclusion": inflation("without", name, "latency_abs_ms"),
        "inflation_batch_with_exclusion": inflation("with", name, "latency_batch_ms"),
        "inflation_batch_without_exclusion": inflation("without", name, "latency_batch_ms"),
        "neighbour_cpus": {mode: [x["neighbour_cpus"] for x in rows[mode][name]] for mode in ("with", "without")},
        "windows": {mode: rows[mode][name] for mode in rows},
    } for name in MODELS}
    return {"per_model": per_model, "threads_each": threads, "rounds": rounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/fmnist-quick.yaml")
    ap.add_argument("--processes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench/results/latency.json")
    ap.add_argument("--threads", type=int, default=None,
                    help="device.latency_threads for every measurement (default: the config's)")
    ap.add_argument("--compare-threads", type=int, default=None,
                    help="also measure the spread with this many threads, recorded beside (spread_other_threads)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        THREADS["n"] = args.threads
    if args.child:
        child(args.config, args.child)
        return
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    exp = experiment(args.config)
    with tempfile.TemporaryDirectory() as runs:
        spread_part = run_processes(args.config, args.processes, runs)
        neighbour = run_neighbour(args.config, args.rounds, runs)
    other = None
    if args.compare_threads:
        own = THREADS.get("n")
        THREADS["n"] = args.compare_threads
        with tempfile.TemporaryDirectory() as runs:
            part = run_processes(args.config, args.processes, runs)
        other = {"threads": args.compare_threads, "per_model": part,
                 **{k: max(v[k] for v in part.values())
                    for k in ("spread_abs", "spread_ratio", "spread_abs_batch", "spread_ratio_batch")}}
        if own is None:
            THREADS.clear()
        else:
            THREADS["n"] = own
    load_end = os.getloadavg()[0]
    # other processes' CPU during the spread windows (this script's own children excluded: each measured itself)
    busy_windows = [b for v in spread_part.values() for b in v["per_process"]["latency_busy_cpus"] if b is not None]
    busy = statistics.median(busy_windows) if busy_windows else None
    worst = max(spread_part, key=lambda k: spread_part[k]["spread_ratio"])
    nb = neighbour["per_model"]
    flags = sorted(cpu_flags())
    result = {
        "spread_abs": max(v["spread_abs"] for v in spread_part.values()),
        "spread_ratio": max(v["spread_ratio"] for v in spread_part.values()),
        "spread_abs_batch": max(v["spread_abs_batch"] for v in spread_part.values()),
        "spread_ratio_batch": max(v["spread_ratio_batch"] for v in spread_part.values()),
        "worst_model_spread_ratio": worst,
        "neighbour_inflation": max(abs(v["inflation_with_exclusion"]) for v in nb.values()),
        "neighbour_inflation_without_exclusion": max(abs(v["inflation_without_exclusion"]) for v in nb.values()),
        "neighbour_inflation_abs": max(abs(v["inflation_abs_with_exclusion"]) for v in nb.values()),
        "neighbour_inflation_abs_without_exclusion": max(abs(v["inflation_abs_without_exclusion"])
                                                         for v in nb.values()),
        "goals": {"spread_ratio": "<= 0.05 where spread_abs is larger", "neighbour_inflation": "<= 0.10"},
        "per_model": spread_part,
        "neighbour": neighbour,
        "spread_other_threads": other,
        "protocol": "CompressionEvaluator.measure_latency: interleaved with the uncompressed reference, "
                    "latency_ms = ratio x the reference's calibrated median (5 windows, shared by all processes)",
        "device": {"name": cpu_name(), "flags": flags, "vnni": has_vnni(set(flags)), "cores": os.cpu_count(),
                   "backend": exp.device.backend, "threads": exp.device.threads,
                   "latency_threads": exp.device.measure_threads,
                   "batch_size": exp.device.batch_size},
        "machine": {"loadavg_start": load_start, "loadavg_end": load_end, "busy_cpus_others_median": busy,
                    "note": (f"other processes kept {busy:.2f} of {os.cpu_count()} CPUs busy: not a quiet machine, "
                             "figures are not representative" if busy is not None and busy > 0.25 else "quiet")},
        "torch_version": torch.__version__,
        "command": " ".join(["python", *sys.argv]),
        "seconds": round(time.perf_counter() - t_start, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_json(args.out, result)
    print(f"spread_abs {result['spread_abs']:.3f} spread_ratio {result['spread_ratio']:.3f} (batch "
          f"{result['spread_abs_batch']:.3f} / {result['spread_ratio_batch']:.3f}); neighbour_inflation "
          f"{result['neighbour_inflation']:.3f} with the exclusion, "
          f"{result['neighbour_inflation_without_exclusion']:.3f} without; loadavg {load_start:.2f}.."
          f"{load_end:.2f} -> {args.out}")


if __name__ == "__main__":
    main()
