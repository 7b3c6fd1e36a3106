"""Benchmark of dynamic image cropping (issue 17) on fashion_mnist_scenes (garments on 48 px textured canvases).

For each resolution on a fixed grid (16, 24, 32 px) the same compression config is evaluated twice by the real
evaluator, `crop: none` and `crop: dic`, with the same fine-tune budget: test accuracy, and latency of the whole
deployed pipeline from the raw 48 px canvas (resize, or box net + RoIAlign crop, then the classifier), measured
interleaved with the study's reference. Also: the box predictor's IoU against the ground-truth boxes (read here,
for evaluation only), the CAM boxes' IoU, and the box net's share of the DIC pipeline's latency.
With --search N: two small random searches (crop none only / crop none+dic) and whether the crop front dominates.

Usage: .venv/bin/python bench/dic.py [--epochs 2] [--search 0] [--out bench/results/dic.json]
Runs under its own runs folder (bench/data/dic-runs); the scenes cache lives in cache_root().
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("EDGECOMPRESS_RUNS", str(ROOT / "bench" / "data" / "dic-runs"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgecompress.evaluators.dic import BoxAndCrop  # noqa: E402
from edgecompress.spaces import parse_experiment  # noqa: E402

RESOLUTIONS = (16, 24, 32)
NATIVE = 48
EXPERIMENT: dict[str, Any] = {
    "name": "bench-dic", "seed": 0,
    "dataset": {"name": "fashion_mnist_scenes", "train_subset": 12000},  # 2 shared cores: 12k of the 18k
    "model": {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}},  # ... and a quarter of the MACs
    "base_training": {"epochs": 2, "batch_size": 128, "lr": 0.1},
    "finetune": {"epochs": 2, "batch_size": 128, "lr": 0.02, "train_subset": 6000, "max_seconds": 3000},
    "space": {"prune": {"choices": [0.0]}, "bits": {"choices": [32]},
              "resolution": {"choices": [r / NATIVE for r in RESOLUTIONS]}, "crop": {"choices": ["none", "dic"]}},
    # one measuring thread, as the demo: robust to a busy second core (bench/results/latency-loaded.json)
    "device": {"device": "cpu", "threads": 2, "latency_threads": 1, "batch_size": 64},
}


def experiment(epochs: int, smoke: bool = False) -> Any:
    data = dict(EXPERIMENT)
    data["finetune"] = {**EXPERIMENT["finetune"], "epochs": epochs}
    if smoke:  # a minute's check of this script, not a result
        data.update(dataset={"name": "fashion_mnist_scenes", "train_subset": 600, "val_subset": 200,
                             "test_subset": 300}, base_training={"epochs": 1, "batch_size": 64},
                    device={**EXPERIMENT["device"], "min_repeats": 5, "max_seconds": 0.3})
        data["finetune"] = {**data["finetune"], "epochs": 1, "train_subset": 200}
    return parse_experiment(data, "bench/dic.py")


def train_indices(exp: Any, n: int) -> np.ndarray:
    """Indices (into the cached training canvases) of the evaluator's training split: load_data's own draw."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(exp.seed))
    n_val = max(1, int(round(n * exp.dataset.val_fraction)))
    return perm[n_val:][: exp.dataset.train_subset].numpy()


def box_figures(ev: Any) -> dict[str, Any]:
    """IoU against the ground truth (read here only) of the CAM boxes (training split), of the box predictor
    (test split) and of the best fixed box chosen on the training split's ground truth."""
    from edgecompress.evaluators import dic, scenes
    from edgecompress.evaluators.data import cache_root

    exp, data, box = ev.exp, ev.data, ev.box_predictor()
    gt_train_all = scenes.ground_truth_boxes(cache_root(), "train", 0)
    gt_train = gt_train_all[train_indices(exp, len(gt_train_all))]
    gt_test = scenes.ground_truth_boxes(cache_root(), "test", 0)[: len(data.test)]
    cam = np.load(box.folder / "cam_boxes_train.npy")
    pred = dic.to_xyxy(dic.predict_boxes(box.net, data.test, NATIVE), NATIVE)
    grid = [np.array([x0, y0, x1, y1], np.float32) for x0 in range(0, NATIVE, 4) for y0 in range(0, NATIVE, 4)
            for x1 in range(x0 + 8, NATIVE + 1, 4) for y1 in range(y0 + 8, NATIVE + 1, 4)]
    sub = gt_train[:4000]
    best = max(grid, key=lambda b: dic.box_iou(np.tile(b, (len(sub), 1)), sub).mean())
    iou_pred = dic.box_iou(pred, gt_test)
    return {
        "box_iou": float(iou_pred.mean()), "box_iou_median": float(np.median(iou_pred)),
        "box_iou_at_0.5": float((iou_pred >= 0.5).mean()),
        "cam_box_iou_train": float(dic.box_iou(cam, gt_train).mean()),
        "fixed_box": best.tolist(), "fixed_box_iou_test": float(dic.box_iou(np.tile(best, (len(gt_test), 1)),
                                                                            gt_test).mean()),
        "box_predictor": box.metrics,
    }


def row(res: Any) -> dict[str, Any]:
    m = res.metrics
    keys = ("test_accuracy", "accuracy", "latency_ms", "latency_batch_ms", "latency_abs_ms", "latency_batch_abs_ms",
            "latency_ratio", "macs", "params", "finetune_seconds", "latency_load")
    return {"state": res.state, **{k: m.get(k) for k in keys}}


def front_comparison(pts: list[tuple], key: str = "latency_ms") -> dict[str, Any]:
    """Points (label, crop, accuracy, latency): the front with crop none only vs with both, the `dic` points of the
    joint front and the points of the `none`-only front each one dominates."""

    def dominates(a: tuple, b: tuple) -> bool:
        return a[2] >= b[2] and a[3] <= b[3] and (a[2] > b[2] or a[3] < b[3])

    def front(ps: list[tuple]) -> list[tuple]:
        return [p for p in ps if not any(dominates(q, p) for q in ps)]

    none_front = front([p for p in pts if p[1] == "none"])
    joint = front(pts)
    wins = [{"dic": p[0], "accuracy": p[2], key: p[3],
             "dominates_none": [{"none": q[0], "accuracy": q[2], key: q[3]} for q in none_front if dominates(p, q)]}
            for p in joint if p[1] == "dic"]
    return {"objective_latency": key, "none_front": [p[0] for p in none_front],
            "joint_front": [f"{p[0]} {p[1]}" for p in joint], "dic_on_joint_front": wins,
            "crop_front_dominates_somewhere": any(w["dominates_none"] for w in wins)}


def grid_points(per_res: list[dict[str, Any]], key: str) -> list[tuple]:
    """The fixed grid's points: test accuracy and latency of each resolution with and without crop."""
    return [(f"{e['resolution_px']} px", c, e[c]["test_accuracy"], e[c][key]) for e in per_res
            for c in ("none", "dic") if e[c]["state"] == "complete"]


def search_experiment(epochs: int, images: int, smoke: bool = False) -> Any:
    """The search's experiment: the grid's, plus a prune axis, a cheaper proxy fine-tune and a grid sampler."""
    exp = experiment(epochs, smoke)
    data = exp.model_dump(mode="json")
    data["name"] = "bench-dic-search"
    data["finetune"] = {**data["finetune"], "epochs": epochs, "train_subset": images}
    data["space"] = {**EXPERIMENT["space"], "prune": {"choices": [0.0, 0.25, 0.5]}}
    data["budget"] = {**data.get("budget", {}), "sampler": "grid"}
    return parse_experiment(data, "bench/dic.py --search")


def search_fronts(trials: int, epochs: int, images: int, smoke: bool) -> dict[str, Any]:
    """A grid search over prune x resolution x crop (one study; validation accuracy is its objective): does the
    front of the `dic` and `none` trials together have `dic` points dominating the `none`-only front?"""
    from edgecompress.search import run_search
    from edgecompress.study import load_study, study_to_frame

    exp = search_experiment(epochs, images, smoke)
    t0 = time.time()
    run_search(exp, exp.name, trials=trials, sampler="grid")
    df = study_to_frame(load_study(exp.name, final="proxy"))
    df = df[df["state"] == "COMPLETE"]
    rows = [{"trial": int(r["number"]), "prune": r["config"]["prune"],
             "px": round(r["config"]["resolution"] * NATIVE), "crop": r["config"].get("crop", "none"),
             "val_accuracy": float(r["accuracy"]), "test_accuracy": float(r["test_accuracy"]),
             "latency_ms": float(r["latency_ms"]), "latency_batch_ms": float(r["latency_batch_ms"])}
            for r in df.to_dict("records")]

    def pts(acc: str, key: str) -> list[tuple]:
        return [(f"prune {r['prune']} {r['px']} px", r["crop"], r[acc], r[key]) for r in rows]

    return {"study": exp.name, "trials_complete": len(rows), "seconds": round(time.time() - t0, 1),
            "finetune": {"epochs": epochs, "train_subset": images}, "space": exp.space.model_dump(mode="json"),
            "trials": rows,
            "fronts_val_accuracy": {"batch_1": front_comparison(pts("val_accuracy", "latency_ms")),
                                    "serving_batch": front_comparison(pts("val_accuracy", "latency_batch_ms"),
                                                                      "latency_batch_ms")},
            "fronts_test_accuracy": {"batch_1": front_comparison(pts("test_accuracy", "latency_ms")),
                                     "serving_batch": front_comparison(pts("test_accuracy", "latency_batch_ms"),
                                                                       "latency_batch_ms")}}


def summary(exp: Any, ev: Any, args: Any, boxes: dict[str, Any], per_res: list[dict[str, Any]], t0: float,
            load_start: float) -> dict[str, Any]:
    """The result document from the resolutions measured so far."""
    from edgecompress.runtime.cpu_features import cpu_flags
    from edgecompress.runtime.latency import cpu_name

    low = per_res[0]
    gain, over = low.get("gain_pp"), low.get("latency_overhead")
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd"})
    result = {
        "bench": "dic", "dataset": "fashion_mnist_scenes (48 px canvases, garment 35-80% of the side)",
        "model": EXPERIMENT["model"], "base_training": EXPERIMENT["base_training"],
        "finetune": {**EXPERIMENT["finetune"], "epochs": args.epochs},
        "gain_pp_lowest_resolution": gain, "latency_overhead_lowest_resolution": over,
        "latency_batch_overhead_lowest_resolution": low.get("latency_batch_overhead"),
        "goal": "at 16 px: gain >= 3 pp for latency overhead <= 0.15",
        "goal_met": bool(gain is not None and gain >= 3 and over is not None and over <= 0.15),
        **boxes, "base_model": ev.base.metrics, "per_resolution": per_res,
        "fronts": {"batch_1": front_comparison(grid_points(per_res, "latency_ms")),
                   "serving_batch": front_comparison(grid_points(per_res, "latency_batch_ms"), "latency_batch_ms")},
        "device": {"cpu": cpu_name(), "isa": flags, "threads": exp.device.threads,
                   "latency_threads": exp.device.measure_threads, "backend": exp.device.backend},
        "loadavg_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "seconds": round(time.time() - t0, 1),
        "command": shlex.join([".venv/bin/python", "bench/dic.py", *sys.argv[1:]]),
        "notes": [
            "latency: the whole deployed graph from the raw 48 px canvas at batch 1 (and the serving batch), "
            "onnxruntime fp32, timed interleaved with the uncompressed base model and drift-corrected "
            "(evaluate.measure_latency); none = antialiased resize + classifier, dic = box net + crop + classifier",
            "box_and_crop_share: the box net + crop graph alone, timed the same way, over the dic pipeline",
            "box_iou: the box predictor's boxes on the test split vs the ground truth, which nothing but this "
            "benchmark reads; fixed_box: the best single box on 4000 training ground-truth boxes (4 px grid)",
            "fronts: from the fixed grid's 6 points (test accuracy): does a dic point dominate a point of the "
            "crop-none front; search (with --search N): the same question on a grid search's trials",
        ],
    }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="fine-tune epochs (same for none and dic)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dic.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny subsets, 16 px only: checks the script runs")
    ap.add_argument("--search", type=int, default=0, metavar="N",
                    help="also N trials of a grid search over prune {0, .25, .5} x resolution x crop (18 configs)")
    ap.add_argument("--search-epochs", type=int, default=1, help="the search's proxy fine-tune epochs")
    ap.add_argument("--search-images", type=int, default=3000, help="the search's proxy fine-tune images per epoch")
    args = ap.parse_args()
    from edgecompress.evaluators.evaluator import CompressionEvaluator
    from edgecompress.spaces.config import CompressionConfig
    from edgecompress.utils import atomic_write_json

    t0 = time.time()
    load_start = os.getloadavg()[0]
    exp = experiment(args.epochs, args.smoke)
    ev = CompressionEvaluator(exp)
    ev.prepare()
    boxes = box_figures(ev)
    per_res = []
    for size in RESOLUTIONS[:1] if args.smoke else RESOLUTIONS:
        entry: dict[str, Any] = {"resolution_px": size}
        for crop in ("none", "dic"):
            res = ev(CompressionConfig(resolution=size / NATIVE, crop=crop))
            entry[crop] = row(res)
            print(size, crop, entry[crop], flush=True)
        dep = ev._deploy(BoxAndCrop(ev.box_predictor().net, size).eval(), NATIVE, "fp32", exporter="dynamo")
        bc = ev.measure_latency(dep, NATIVE)
        entry["box_and_crop_latency_ms"] = bc["latency_ms"]
        entry["box_and_crop_latency_batch_ms"] = bc["latency_batch_ms"]
        n, d = entry["none"], entry["dic"]
        if n["state"] == d["state"] == "complete":
            entry["gain_pp"] = 100 * (d["test_accuracy"] - n["test_accuracy"])
            entry["latency_overhead"] = d["latency_ms"] / n["latency_ms"] - 1
            entry["latency_batch_overhead"] = d["latency_batch_ms"] / n["latency_batch_ms"] - 1
            entry["box_and_crop_share"] = bc["latency_ms"] / d["latency_ms"]
            entry["box_and_crop_share_batch"] = bc["latency_batch_ms"] / d["latency_batch_ms"]
        per_res.append(entry)
        result = summary(exp, ev, args, boxes, per_res, t0, load_start)  # written after each resolution
        atomic_write_json(Path(args.out), result)
    if args.search:
        result["search"] = search_fronts(args.search, args.search_epochs, args.search_images, args.smoke)
        result["search_front_dominates_somewhere"] = any(
            f["crop_front_dominates_somewhere"] for f in result["search"]["fronts_val_accuracy"].values())
        atomic_write_json(Path(args.out), result)
    print(json.dumps({k: result.get(k) for k in ("gain_pp_lowest_resolution", "latency_overhead_lowest_resolution",
                                              "box_iou", "goal_met", "search_front_dominates_somewhere")}))


if __name__ == "__main__":
    main()
