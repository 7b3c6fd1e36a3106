"""An export folder's files and its config.yaml: everything needed to reproduce the exported trial and to use its
files (the loader's preprocessing in words and as data, the checks, the versions), and reading it back."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import edgecompress
from edgecompress.evaluators.data import DataBundle
from edgecompress.export.checks import ExportError, ExportResult
from edgecompress.runtime.latency import device_name
from edgecompress.runtime.preprocess import Preprocess
from edgecompress.spaces.config import CompressionConfig
from edgecompress.spaces.experiment import ExperimentConfig
from edgecompress.study import attrs as A
from edgecompress.utils import plain, read_format_yaml

FORMAT = "edgecompress.export"
FORMAT_VERSION = 2  # 2: input.preprocess is the loader's steps (words + data), not one line
READABLE_VERSIONS = (1, 2)
FILES = {"config": "config.yaml", "torchscript": "model.torchscript.pt", "onnx": "model.onnx",
         "onnx_int8": "model_int8.onnx", "onnx_preprocess": "model_preprocess.onnx",
         "onnx_int8_preprocess": "model_int8_preprocess.onnx"}
PREPROCESS_LAYOUT = "NHWC"  # the uint8 input of the files with the preprocessing in the graph
_METRIC_TYPES = (int, float, str, bool)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the runtimes an exported model was built and checked with."""
    out = {"edgecompress": edgecompress.__version__, "torch": torch.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    for mod in ("onnxruntime", "onnx"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    return out


def preprocessed_input(spec: Preprocess, size: int, files: list[str]) -> dict[str, Any]:
    """config.yaml's description of the files with the preprocessing in the graph."""
    c = spec.channels
    decode = (f"decode with PIL: np.asarray(Image.open(file).convert({spec.pil_mode!r}))" if spec.pil_mode
              else f"the stored uint8 pixels ({spec.stored})")
    return {
        "files": files, "input_name": "images", "dtype": "uint8", "layout": PREPROCESS_LAYOUT,
        "shape": ["N", "H", "W", c], "output": "logits",
        "words": f"uint8 images N x H x W x {c} ({decode}; all images of one batch the same H x W); the graph runs "
                 f"the steps after decoding (ONNX Resize with antialias, opset >= 18) and the model",
    }


def export_config(result: ExportResult, exp: ExperimentConfig, data: DataBundle, row: dict[str, Any],
                  size: int, device: str, threads: int, staging: Path,
                  spec: Preprocess | None = None) -> dict[str, Any]:
    """The config.yaml content: everything needed to reproduce and to use the exported model."""
    metric_keys = [k for k, v in row.items() if isinstance(v, _METRIC_TYPES) and not k.startswith(
        ("params_", "cfg_", "violation_", "datetime"))]
    metrics = {k: plain(row[k]) for k in sorted(metric_keys)}
    files = {}
    for name in result.files:
        p = staging / name
        files[name] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    spec = spec or data.preprocess
    if spec is None:
        raise ExportError(f"dataset {data.name!r}: its loader states no preprocessing (RawData.preprocess)")
    pre_files = [f for f in result.files if f.endswith("_preprocess.onnx")]
    inp: dict[str, Any] = {"size": size, "channels": data.in_chans, "layout": "NCHW", "dtype": "float32",
                           "preprocess": spec.describe(size), "mean": plain(list(spec.mean)),
                           "std": plain(list(spec.std)), "classes": list(data.classes)}
    if pre_files:
        inp["preprocessed_onnx"] = preprocessed_input(spec, size, pre_files)
    pc = result.preprocess_check
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "study": result.study,
        "trial": result.number,
        "selection": {"reason": result.selection.reason, "feasible": result.selection.feasible,
                      "violations": plain(result.selection.violations)},
        "compression": result.config.to_dict(),
        A.CONFIG_HASH: result.config.config_hash(),  # named as the trial attrs they come from
        A.WEIGHTS_HASH: result.weights_sha256,
        A.FIDELITY: result.fidelity,
        "gains_vs_uncompressed": dict(result.gains) or None,
        "base_model": {"key": exp.base_key(), "model": exp.model.name, "dataset": exp.dataset.name},
        "seed": exp.seed,
        "input": inp,
        "metrics": metrics,
        "device": {"export_device": device, "export_device_name": device_name(device), "threads": threads,
                   "search_device": metrics.get("device"), "search_device_name": metrics.get("device_name"),
                   "search_backend": metrics.get("backend")},
        "versions": versions(),
        "files": files,
        "checks": [plain(asdict(c)) for c in result.checks],
        "preprocess_check": plain(asdict(pc)) if pc is not None else None,
        "budget": {"max_latency_ms": result.max_latency_ms, "latency_check": result.latency_check},
        "problems": list(result.problems),
        "notes": precision_notes(result.config) + list(result.notes),
        "experiment": exp.to_dict(),
    }


def precision_notes(cfg: CompressionConfig) -> list[str]:
    """What the exported files are, relative to the precision the trial was scored at."""
    w, a = cfg.w_bits, cfg.a_bits
    if w < 8:
        return [f"the trial's accuracy is the {w}/{a}-bit fake-quantised model's; no runtime has {w}-bit kernels, "
                "so the files are fp32 and int8 (QDQ) and the int8 latency is scaled by the BitOPs ratio"]
    if w == 16:
        return ["16-bit trial: the files are fp32 (cast to fp16/bf16 at load time where the device supports it)"]
    return []


def load_export_config(path: str | os.PathLike[str]) -> tuple[CompressionConfig, dict[str, Any]]:
    """Read an export's config.yaml (a file or its folder) -> (CompressionConfig, the whole document)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILES["config"]
    doc = read_format_yaml(path, FORMAT, READABLE_VERSIONS, "export config")
    return CompressionConfig.from_dict(doc["compression"], str(path)), doc
