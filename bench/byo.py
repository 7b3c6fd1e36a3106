"""Benchmark: bring-your-own models. Per architecture (torchvision, timm, a user module) on 1-channel 32 px
images: the stages found from the graph, the layers kept out and why, MACs and parameters, and measured batch-1
ONNX Runtime latency (1 thread) at prune 0 and 0.5 (every stage), fp32 and int8.

Weights are not trained (latency does not depend on them): BatchNorm statistics come from 256 real Fashion-MNIST
images, int8 is calibrated on 256 more. The forms of one architecture are timed interleaved, ROUNDS rounds, each
round a settled measure_latency run; the figure is the median over rounds, with the min-max spread.
Writes bench/results/byo.json.

Usage: .venv/bin/python bench/byo.py [--rounds 3] [--archs torchvision:resnet18,...]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecompress.errors import EdgeCompressError  # noqa: E402
from edgecompress.evaluators.compress.prune import count_macs_params, prune_model  # noqa: E402
from edgecompress.evaluators.data import FMNIST_FILES, fmnist_folder, read_idx  # noqa: E402
from edgecompress.evaluators.models import create_model  # noqa: E402
from edgecompress.evaluators.structure import attach_structure  # noqa: E402
from edgecompress.runtime.backend import deploy  # noqa: E402
from edgecompress.runtime.cpu_features import cpu_flags  # noqa: E402
from edgecompress.runtime.latency import cpu_name, measure_latency  # noqa: E402
from edgecompress.utils import atomic_write_json  # noqa: E402

ARCHS = ["torchvision:resnet18", "torchvision:mobilenet_v3_small", "torchvision:efficientnet_b0",
         "torchvision:regnet_x_400mf", "torchvision:shufflenet_v2_x0_5", "torchvision:densenet121",
         "timm:mobilenetv3_small_050", "edgecompress.testing:odd_net"]
SIZE = 32
OUT = ROOT / "bench" / "results" / "byo.json"


def images() -> torch.Tensor:
    folder = fmnist_folder()
    if folder is None:
        raise SystemExit("Fashion-MNIST not found: run `make data`")
    x = torch.from_numpy(read_idx(folder / FMNIST_FILES["test_images"], 3)[:512].copy()).float() / 255
    x = nn.functional.interpolate(x.unsqueeze(1), size=(SIZE, SIZE), mode="bilinear", antialias=True)
    return (x - 0.286) / 0.353


def calibrated(ref: str, x: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(ref, num_classes=10, in_chans=1, input_size=SIZE)
    attach_structure(model, 1, SIZE)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, 256, 64):
            model(x[i: i + 64])
    return model.eval()


def bench_arch(ref: str, x: torch.Tensor, rounds: int) -> dict:
    try:
        base = calibrated(ref, x)
    except EdgeCompressError as e:
        return {"refused": str(e)}
    struct = base.ec_structure
    pruned = copy.deepcopy(base)
    prune_model(pruned, x[:1], 0.5)
    entry: dict = {
        "stages": [{"name": s.name, "px": s.size, "layers": len(s.layers), "droppable_blocks": sum(map(len, s.runs))}
                   for s in struct.stages],
        "kept_out": struct.kept_out, "kept_out_count": len(struct.kept_out), "classifier": struct.classifier,
        "min_input": struct.min_input,
    }
    calib = [x[256 + i: 256 + i + 64] for i in range(0, 256, 64)]
    forms = {}
    for label, model in (("prune0", base), ("prune0.5", pruned)):
        macs, params = count_macs_params(model, x[:1])
        entry[f"macs_{label}"], entry[f"params_{label}"] = macs, params
        forms[f"{label}_fp32"] = deploy(model, x[:1], backend="onnxruntime", threads=1)
        forms[f"{label}_int8"] = deploy(model, x[:1], backend="onnxruntime", precision="int8", threads=1,
                                        calib_batches=calib)
    one = x[:1]
    times: dict[str, list[float]] = {k: [] for k in forms}
    for _ in range(rounds):
        for k, d in forms.items():  # interleaved: every form once per round
            stats = measure_latency(lambda d=d: d.run(one), batch_size=1, threads=1, min_repeats=20,
                                    max_seconds=1.5, use_lock=False, clock="host")
            times[k].append(stats.median_ms)
    entry["latency_b1_ms"] = {k: round(statistics.median(v), 4) for k, v in times.items()}
    entry["latency_b1_ms_range"] = {k: [round(min(v), 4), round(max(v), 4)] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    entry["speedup_vs_prune0_fp32"] = {k: round(med["prune0_fp32"] / v, 3) for k, v in med.items()}
    entry["macs_ratio_prune0.5"] = round(entry["macs_prune0.5"] / entry["macs_prune0"], 3)
    return entry


def readme_table(doc: dict) -> str:
    """The README's bring-your-own-model table, rendered from byo.json (tests/bench/test_byo_readme.py checks
    that the README holds exactly this)."""
    isa = ", ".join(i for i in doc["isa"] if i.startswith(("avx512f", "avx512_vnni", "amx")))
    head = (f"Measured by `bench/byo.py` on {doc['cpu']} ({isa}), ONNX Runtime batch 1 on 1 thread, "
            f"1 x 32 x 32 input, untrained weights, median of {doc['rounds']} interleaved rounds "
            f"(commit {doc['git_commit'][:7]}):")
    rows = [head, "",
            "| model | stages (px) | kept out | MACs prune 0 -> 0.5 | fp32 ms prune 0 / 0.5 | int8 ms prune 0 / 0.5 |",
            "|---|---|---|---|---|---|"]
    for ref, a in doc["archs"].items():
        if "refused" in a:
            rows.append(f"| `{ref}` | refused: {a['refused']} | | | | |")
            continue
        lat = a["latency_b1_ms"]
        shuffled = sum("channel shuffle" in why for why in a["kept_out"].values())
        kept = f"{a['classifier']}" + (f"; {shuffled} by channel shuffles" if shuffled else "")
        rows.append(f"| `{ref}` | {' / '.join(str(s['px']) for s in a['stages'])} | {a['kept_out_count']} "
                    f"({kept}) | {a['macs_prune0'] / 1e6:.2f} M -> {a['macs_prune0.5'] / 1e6:.2f} M | "
                    f"{lat['prune0_fp32']:.3f} / {lat['prune0.5_fp32']:.3f} | "
                    f"{lat['prune0_int8']:.3f} / {lat['prune0.5_int8']:.3f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--readme", action="store_true", help="print the README table from byo.json and exit")
    args = ap.parse_args()
    if args.readme:
        print(readme_table(json.loads(OUT.read_text())))
        return
    torch.set_num_threads(1)
    x = images()
    load_start = os.getloadavg()
    doc = {
        "what": "per architecture: stages from the dependency graph, layers kept out, MACs and measured batch-1 "
                "ONNX Runtime latency (1 thread) at prune 0 / 0.5, fp32 and int8; 1 x 32 x 32 input, untrained "
                "weights with real-image BatchNorm statistics",
        "cpu": cpu_name(), "isa": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "sse4"))),
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                     cwd=ROOT).stdout.strip(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "rounds": args.rounds, "seed": 0,
        "torch": torch.__version__, "load_avg_start": load_start, "archs": {},
    }
    for ref in args.archs.split(","):
        t0 = time.perf_counter()
        doc["archs"][ref] = bench_arch(ref, x, args.rounds)
        doc["archs"][ref]["bench_seconds"] = round(time.perf_counter() - t0, 1)
        print(ref, json.dumps({k: v for k, v in doc["archs"][ref].items() if k not in ("kept_out", "stages")}),
              flush=True)
    doc["load_avg_end"] = os.getloadavg()
    atomic_write_json(OUT, doc)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
