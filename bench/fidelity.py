"""Benchmark of the search proxy against finalized training (issue 14), on Fashion-MNIST.

1. A grid study over prune x bits x resolution (12 configs by default, the uncompressed one included),
   each evaluated with the demo's proxy: BatchNorm re-estimation, then 1 fine-tune epoch on 8000 images.
2. `finalize` of every config: the whole training split (54k images), E epochs, augmentation, distillation.
3. proxy vs final validation accuracy: Kendall tau, Spearman, mean gap (pp), each with a bootstrap 95%
   interval over configs; Kendall tau over the configs in the proxy's top two non-dominated ranks.
4. The finalized front's headline: latency of the finalized uncompressed config / latency of the fastest
   finalized model within 0.5 pp (and 1 pp) of its test accuracy, at batch 1 and at the serving batch.

Usage: .venv/bin/python bench/fidelity.py [--epochs 3] [--remeasure] [--out bench/results/fidelity.json]
Runs under its own runs folder (bench/data/fidelity-runs-e<E>), reusing the demo's cached base model when present.
Search and finalize resume: train on a busy machine, then rerun with `--remeasure` on a quiet one, which re-measures
the finalized study's latencies (`edgecompress remeasure`'s protocol) and takes the speed-ups from those.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecompress.export.retarget import remeasure_study, remeasured_name  # noqa: E402
from edgecompress.runtime.cpu_features import cpu_flags  # noqa: E402
from edgecompress.runtime.latency import cpu_name  # noqa: E402
from edgecompress.search import run_search  # noqa: E402
from edgecompress.search.finalize import choose_configs, finalize_study  # noqa: E402
from edgecompress.search.study_setup import space_for  # noqa: E402
from edgecompress.spaces import load_experiment, parse_experiment  # noqa: E402
from edgecompress.study import front, front_ranks, load_study, study_to_frame  # noqa: E402
from edgecompress.utils import atomic_write_json, stable_hash  # noqa: E402

STUDY = "bench-fidelity"
# 4 x 2 x 2 = 16 configs at 22 and 28 px (18 px loses ~5 pp even finalized: no use within 0.5 pp of the base)
GRID = {"space.prune": {"choices": [0.0, 0.25, 0.5, 0.625]}, "space.bits": {"choices": [32, 8]},
        "space.resolution": {"choices": [0.786, 1.0]}}
N_CONFIGS = 16
ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd")


def grid_key(config: dict[str, Any]) -> tuple:
    """The grid's coordinates of a trial's config (finalize adds its own keys, such as finetune_epochs)."""
    return (float(config["prune"]), int(config["w_bits"]), int(config["a_bits"]), float(config["resolution"]))


def bootstrap(fn: Any, x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of fn(x, y) over configs resampled with replacement."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(reps):
        i = rng.integers(0, len(x), len(x))
        if len(set(x[i])) > 1 and len(set(y[i])) > 1:
            vals.append(fn(x[i], y[i]))
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def speedup(final: Any, within_pp: float, key: str) -> dict[str, Any] | None:
    """Latency of the uncompressed config / the fastest model within `within_pp` of its test accuracy."""
    base = final[final["proxy_reason"] == "uncompressed"]
    if base.empty:
        return None
    b = base.iloc[0]
    ok = final[final["test_accuracy"] >= b["test_accuracy"] - within_pp / 100]
    ok = ok[ok["latency_source"] == "measured"]
    best = ok.sort_values(key).iloc[0]
    return {"speedup": float(b[key] / best[key]), "trial": int(best["number"]), "config": best["config"],
            "test_accuracy": float(best["test_accuracy"]), "base_test_accuracy": float(b["test_accuracy"]),
            f"{key}": float(best[key]), f"base_{key}": float(b[key])}


def markdown_table(result: dict[str, Any]) -> str:
    """The finalized (deployable) front as the paper's table: config, MACs, latency b1 / batch, test top-1."""
    lines = ["| config | MACs (M) | latency b1 (ms) | latency batch (ms) | test top-1 |", "|---|---|---|---|---|"]
    for r in result["finalized_front"]:
        c = r["config"]
        name = (f"prune {c.get('prune')}, {c.get('w_bits')}-bit, res x{c.get('resolution')}"
                if (c.get("prune") or c.get("w_bits", 32) < 32 or c.get("resolution", 1.0) < 1.0) else "uncompressed")
        lines.append(f"| {name} | {r['macs'] / 1e6:.2f} | {r['latency_ms']:.3f} | {r['latency_batch_ms']:.2f} | "
                     f"{r['test_accuracy'] * 100:.2f}% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--config", default="configs/fmnist-quick.yaml")
    ap.add_argument("--runs", default=None, help="runs folder (default bench/data/fidelity-runs-e<epochs>)")
    ap.add_argument("--remeasure", action="store_true",
                    help="re-measure the finalized study's latencies quietly and use those for the speed-ups")
    ap.add_argument("--remeasured", action="store_true",
                    help="take the latencies of an earlier --remeasure (<study>-final-remeasured) without re-timing")
    ap.add_argument("--latency-threads", type=int, default=None,
                    help="with --remeasure: device.latency_threads of the re-measurement (default: the study's)")
    ap.add_argument("--no-train", action="store_true",
                    help="no search or finalize: figures from the configs finalized so far (e.g. after a stopped run)")
    ap.add_argument("--proxy-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a stronger or cheaper proxy (e.g. finetune.train_subset=16000): its own grid study "
                         "<study>-p<hash>, compared with the same finalized configs (repeatable)")
    ap.add_argument("--out", default="bench/results/fidelity.json")
    args = ap.parse_args()
    args.runs = args.runs or f"bench/data/fidelity-runs-e{args.epochs}"
    os.environ["EDGECOMPRESS_RUNS"] = str((ROOT / args.runs).resolve())
    Path(os.environ["EDGECOMPRESS_RUNS"]).mkdir(parents=True, exist_ok=True)
    demo_cache = ROOT / "runs" / "cache"
    cache = Path(os.environ["EDGECOMPRESS_RUNS"]) / "cache"
    if demo_cache.is_dir() and not cache.exists():
        cache.symlink_to(demo_cache.resolve())  # the demo's base model: same dataset, model, recipe, seed
    # latency_threads unset, as when the studies were made (the demo config now measures on 1 thread; the
    # experiment hash must match to resume); --remeasure --latency-threads 1 re-times on one thread
    exp = load_experiment(ROOT / args.config, {**GRID, "budget.sampler": "grid", "device.latency_threads": None})
    t0 = time.time()
    if args.no_train:  # the studies as they are: finalized configs so far, nothing trained
        t_search = t_final = 0.0
        chosen = choose_configs(study_to_frame(load_study(STUDY, final="proxy")), N_CONFIGS - 1,
                                uncompressed=space_for(exp).uncompressed())
    else:
        run_search(exp, STUDY, trials=N_CONFIGS, sampler="grid")
        t_search = time.time() - t0
        chosen = finalize_study(STUDY, top=N_CONFIGS - 1, epochs=args.epochs).chosen
        t_final = time.time() - t0 - t_search
    bad = [kv for kv in args.proxy_set if "=" not in kv]
    if bad:
        ap.error(f"--proxy-set: expected KEY=VALUE, got {bad[0]!r}")
    proxy_overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.proxy_set)}
    proxy_study = STUDY
    if proxy_overrides:  # the same grid under another proxy; the finalized configs do not depend on it
        proxy_study = f"{STUDY}-p{stable_hash(proxy_overrides)[:8]}"
        run_search(load_experiment(ROOT / args.config, {**GRID, "budget.sampler": "grid",
                                                       "device.latency_threads": None, **proxy_overrides}),
                   proxy_study, trials=N_CONFIGS, sampler="grid")
    proxy = study_to_frame(load_study(proxy_study, final="proxy"))
    final = study_to_frame(load_study(STUDY, final="final"))
    reason = {c.proxy_trial: c.reason for c in chosen}
    final = final[final["state"] == "COMPLETE"].copy()
    latency_how = "measured during finalize (search protocol: interleaved reference, drift-corrected)"
    measure_threads = exp.device.measure_threads
    if args.remeasure or args.remeasured:
        db = str(Path(os.environ["EDGECOMPRESS_RUNS"]) / f"{STUDY}.db")  # the final study lives beside the search
        if args.remeasure:
            quiet_name = remeasure_study(f"{STUDY}-final", storage=db, overwrite=True,
                                         latency_threads=args.latency_threads).study
        else:
            quiet_name = remeasured_name(f"{STUDY}-final")
        quiet_study = load_study(quiet_name, db)
        quiet = study_to_frame(quiet_study)
        quiet = quiet[quiet["state"] == "COMPLETE"].set_index("config_hash")  # a killed trial's leftovers: no
        for key in ("latency_ms", "latency_batch_ms", "latency_source"):
            final[key] = [quiet.at[h, key] if h in quiet.index else np.nan for h in final["config_hash"]]
        measure_threads = parse_experiment(quiet_study.user_attrs["experiment"]).device.measure_threads
        latency_how = (f"re-measured after finalize with `edgecompress remeasure` ({quiet_name}), "
                       f"machine quiet, same protocol, {measure_threads} measuring thread(s)")
    final["proxy_reason"] = [reason.get(int(n)) if n == n else None for n in final["proxy_trial"]]
    # matched on the compression config (prune, bits, resolution), so another proxy study pairs up too
    proxy["grid_key"] = [grid_key(c) for c in proxy["config"]]
    final["grid_key"] = [grid_key(c) for c in final["config"]]
    pairs = final.merge(proxy[["grid_key", "number", "accuracy"]], on="grid_key", suffixes=("", "_proxy"))
    pairs["proxy_trial"] = pairs["number_proxy"]
    x, y = pairs["accuracy_proxy"].to_numpy(float), pairs["accuracy"].to_numpy(float)

    def tau(a: np.ndarray, b: np.ndarray) -> float:
        return float(stats.kendalltau(a, b).statistic)

    def rho(a: np.ndarray, b: np.ndarray) -> float:
        return float(stats.spearmanr(a, b).statistic)

    def gap(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(b - a) * 100)

    proxy_exp = load_experiment(ROOT / args.config, proxy_overrides)
    ranks = front_ranks(proxy)
    near = set(proxy.loc[(ranks >= 0) & (ranks <= 1), "number"].astype(int))
    near_pairs = pairs[pairs["proxy_trial"].astype(int).isin(near)]
    result = {
        "what": f"proxy (BN re-estimation + {proxy_exp.finetune.epochs} epoch(s) on "
                f"{proxy_exp.finetune.train_subset} images) vs finalized (all 54k images, "
                f"{args.epochs} epochs, augmentation, distillation) validation accuracy per config",
        "proxy_study": proxy_study, "proxy_overrides": proxy_overrides,
        # what the proxy costs per trial (finetune_seconds: training only; the machine may have been shared)
        "proxy_finetune_seconds_median": float(proxy.loc[proxy["state"] == "COMPLETE", "finetune_seconds"].median())
        if "finetune_seconds" in proxy else None,
        "configs": int(len(pairs)),
        "kendall_tau": tau(x, y), "kendall_tau_ci95": bootstrap(tau, x, y),
        "spearman": rho(x, y), "spearman_ci95": bootstrap(rho, x, y),
        "mean_gap_pp": gap(x, y), "mean_gap_pp_ci95": bootstrap(gap, x, y),
        "kendall_tau_near_front": tau(near_pairs["accuracy_proxy"].to_numpy(float),
                                      near_pairs["accuracy"].to_numpy(float)) if len(near_pairs) > 2 else None,
        "near_front_configs": int(len(near_pairs)),
        "goal": "kendall_tau >= 0.7; best_speedup_0p5_batch >= 3",
        "per_config": [{"proxy_trial": int(r["proxy_trial"]), "final_trial": int(r["number"]),
                        "config": r["config"], "proxy_accuracy": float(r["accuracy_proxy"]),
                        "final_accuracy": float(r["accuracy"]), "test_accuracy": float(r["test_accuracy"]),
                        "macs": float(r["macs"]), "latency_ms": float(r["latency_ms"]),
                        "latency_batch_ms": float(r["latency_batch_ms"]), "latency_source": r["latency_source"]}
                       for r in pairs.to_dict("records")],
        "latency": latency_how,
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "seconds": {"search": round(t_search, 1), "finalize": round(t_final, 1)},
        "device": {"cpu": cpu_name(), "isa": sorted(f for f in cpu_flags() if f in ISA),
                   "cores": os.cpu_count(), "threads": exp.device.threads,
                   "latency_threads": measure_threads},
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/fidelity.py", *sys.argv[1:]]),
        "search_trials": int((proxy["state"] == "COMPLETE").sum()),
    }
    for pp, tag in ((0.5, "0p5"), (1.0, "1p0")):
        for key, suffix in (("latency_ms", "b1"), ("latency_batch_ms", "batch")):
            s = speedup(final, pp, key)
            result[f"best_speedup_{tag}_{suffix}"] = None if s is None else s["speedup"]
            result[f"best_speedup_{tag}_{suffix}_detail"] = s
    fr = front(final, deployable=True).sort_values("latency_ms")
    result["finalized_front"] = [
        {"final_trial": int(r["number"]), "config": r["config"], "macs": float(r["macs"]),
         "latency_ms": float(r["latency_ms"]), "latency_batch_ms": float(r["latency_batch_ms"]),
         "val_accuracy": float(r["accuracy"]), "test_accuracy": float(r["test_accuracy"])}
        for r in fr.to_dict("records")]
    out = ROOT / args.out
    atomic_write_json(out, result)
    print(markdown_table(result))
    print(f"kendall_tau {result['kendall_tau']:.3f} {result['kendall_tau_ci95']}, mean gap "
          f"{result['mean_gap_pp']:+.2f} pp, best speedup within 0.5 pp: b1 {result['best_speedup_0p5_b1']}, "
          f"batch {result['best_speedup_0p5_batch']} -> {out}")


if __name__ == "__main__":
    main()
