"""What dynamic image cropping adds to a batch-1 call, by box predictor version (issue 17's latency goal).

The deployed graphs of bench/dic.py's 16 px point, exported as the evaluator exports pipelines (dynamo), with
random weights (speed does not depend on them): `none` (antialiased resize + ResNet-8 8/16/32), `dic_v1` (the
24 px CNN box net + crop + the same classifier), `dic_v2` (the 12 px MLP box net), and the parts alone (box net
+ crop, the resize, an empty graph). ONNX Runtime CPU sessions with the deploy options; each graph is timed in
blocks of `calls` runs, the graphs interleaved block by block for `rounds` rounds; figures are the fastest
block (the least disturbed on a shared machine) and the median of the per-round dic/none ratios.
No training, no data: seconds. The whole-pipeline accuracy and latency figures are bench/dic.py's.

Usage: .venv/bin/python bench/dic_overhead.py [--threads 1] [--batch 1] [--out bench/results/dic_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

NATIVE = 48


class _Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def graphs(size: int) -> dict[str, torch.nn.Module]:
    from edgecompress.evaluators import dic
    from edgecompress.evaluators.models import create_model

    torch.manual_seed(0)
    clf = create_model("resnet8", num_classes=10, in_chans=1, widths=[8, 16, 32]).eval()
    v1 = dic.BoxNet(1, NATIVE, res=24, width=8, arch="conv").eval()
    v2 = dic.BoxNet(1, NATIVE).eval()
    return {"none": dic.ResizePipeline(clf, size), "dic_v1": dic.DICPipeline(v1, clf, NATIVE, size),
            "dic_v2": dic.DICPipeline(v2, clf, NATIVE, size), "box_crop_v1": dic.BoxAndCrop(v1, size),
            "box_crop_v2": dic.BoxAndCrop(v2, size), "resize": dic.ResizePipeline(_Scale(), size), "empty": _Scale()}


def export_all(size: int, folder: Path) -> dict[str, Path]:
    """Each graph of `graphs(size)` as ONNX in `folder` (dynamo exporter, as the evaluator's pipelines)."""
    from edgecompress.runtime.backend_ort import export_onnx

    return {name: export_onnx(m.eval(), torch.randn(1, 1, NATIVE, NATIVE), folder / f"{name}.onnx", "dynamo")
            for name, m in graphs(size).items()}


def measure(paths: dict[str, Path], size: int = 16, threads: int = 1, batch: int = 1, calls: int = 100,
            rounds: int = 31) -> dict[str, Any]:
    import onnxruntime as ort

    from edgecompress.runtime.backend_ort import ort_session_options

    x = np.random.default_rng(0).standard_normal((batch, 1, NATIVE, NATIVE)).astype(np.float32)
    fns = {}
    for name, path in paths.items():
        s = ort.InferenceSession(str(path), sess_options=ort_session_options(threads),
                                 providers=["CPUExecutionProvider"])
        fns[name] = lambda s=s: s.run(None, {"input": x})
    for f in fns.values():
        for _ in range(max(20, calls // 3)):
            f()
    per: dict[str, list[float]] = {k: [] for k in fns}
    load0 = os.getloadavg()[0]
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            per[k].append((time.perf_counter() - t0) / calls * 1e6)
    best = {k: min(v) for k, v in per.items()}
    out: dict[str, Any] = {"size": size, "threads": threads, "batch": batch, "calls": calls, "rounds": rounds,
                           "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
                           "fastest_block_us": {k: round(v, 2) for k, v in best.items()}}
    for v in ("v1", "v2"):
        ratios = [a / b - 1 for a, b in zip(per[f"dic_{v}"], per["none"], strict=True)]
        out[f"overhead_{v}"] = {"fastest_blocks": best[f"dic_{v}"] / best["none"] - 1,
                                "median_paired": float(np.median(ratios)),
                                "box_crop_minus_resize_us": best[f"box_crop_{v}"] - best["resize"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--repeats", type=int, default=2, help="fresh measurements per setting")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    from edgecompress.runtime.latency import cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        paths = export_all(args.size, Path(tmp))
        runs = [measure(paths, args.size, t, b, calls=100 if b == 1 else 20, rounds=31 if b == 1 else 9)
                for b in args.batch for t in args.threads for _ in range(args.repeats)]
    import onnxruntime as ort

    doc = {"bench": "dic_overhead", "device": {"cpu": cpu_name(), "cores": os.cpu_count(), "onnxruntime":
                                                ort.__version__}, "command": " ".join(["bench/dic_overhead.py",
                                                                                       *sys.argv[1:]]),
           "runs": runs, "notes": __doc__.split("\n\n")[1].replace("\n", " ")}
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
