"""Turn an nn.Module into the form it will ship on (ONNX Runtime, eager torch, torch.compile) and time it.

Latency is only meaningful on the runtime the model ships on, so every precision is built for its
backend: int8 is ONNX Runtime static QDQ (per-channel weights) or torch int8 (torchao/torch.ao PT2E
when importable, else torch.ao FX PTQ on the x86 engine); 16-bit is fp16 on CUDA and bf16 on CPU where
it runs, else fp32. `Deployed.precision` says what the model really is, fallbacks included. Below 8 bits
there are no real kernels: sub8bit's `estimate_latency` scales a measured latency by the BitOPs ratio and
`estimate_sub8bit` applies it to a whole measurement.

This module is the entry point (`deploy`); the backends build in runtime_ort (ONNX Runtime: export, int8 QDQ,
sessions, thread pools) and runtime_torch (eager, torch.compile), the shipped form is deployed.Deployed and the
CPU's int8 scheme is chosen in cpu_features.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress.errors import EdgeCompressError
from edgecompress.runtime.backend_ort import build_ort
from edgecompress.runtime.backend_torch import build_torch
from edgecompress.runtime.cpu_features import INT8_SCHEMES
from edgecompress.runtime.deployed import Deployed

BACKENDS = ("onnxruntime", "torch", "torch_compile")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def deploy(
    model: nn.Module,
    example_input: torch.Tensor,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    calib_batches: Iterable[Any] | None = None,
    device: str | torch.device = "cpu",
    threads: int = 2,
    workdir: str | Path | None = None,
    exporter: str = "legacy",
    spinning: bool = True,
    int8_scheme: str = "auto",
) -> Deployed:
    """Build `model` for `backend` at `precision` on `device`; the caller's model is not modified.

    `calib_batches` (tensors or (x, y) pairs from training data) is required for int8. `workdir` keeps
    the built files (model.onnx, model_int8.onnx, model.pt); without it they live in a temp folder
    that is removed (`path` is then None; `size_bytes` is still measured). `exporter` is "legacy"
    (TorchScript-based, ~0.1 s per ResNet-8) or "dynamo" (~1.5-3 s here, needs onnxscript).
    `int8_scheme` (onnxruntime int8): "auto" picks for the CPU this runs on, see `resolve_int8_scheme`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r} (deploy)")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r} (deploy)")
    if int8_scheme not in INT8_SCHEMES:
        raise ValueError(f"int8_scheme must be one of {INT8_SCHEMES}, got {int8_scheme!r} (deploy)")
    if exporter not in ("legacy", "dynamo"):
        raise ValueError(f"exporter must be 'legacy' or 'dynamo', got {exporter!r} (deploy)")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r} (deploy)")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise ValueError("example_input must be a 4-d tensor (N, C, H, W) (deploy)")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EdgeCompressError(f"deploy: device {dev} requested but CUDA is not available on this machine")
    if precision == "int8" and calib_batches is None:
        raise ValueError("precision 'int8' needs calib_batches (training images for calibration) (deploy)")

    model = copy.deepcopy(model).cpu().float().eval()
    example = example_input.detach().cpu().float()
    calib = [_calib_tensor(b) for b in calib_batches] if calib_batches is not None else []
    t0 = time.perf_counter()
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="edgecompress-deploy-") as tmp:
            dep = _build(model, example, backend, precision, calib, dev, threads, Path(tmp), exporter, spinning,
                         int8_scheme)
            dep.path = None  # the temp folder is gone; the session holds the model in memory
    else:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        dep = _build(model, example, backend, precision, calib, dev, threads, Path(workdir), exporter, spinning,
                     int8_scheme)
    dep.build_seconds = time.perf_counter() - t0
    return dep


def _calib_tensor(batch: Any) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("batch of calib_batches must be a 4-d tensor or an (x, y) pair (deploy)")
    return x.detach().cpu().float()


def _build(model: nn.Module, example: torch.Tensor, backend: str, precision: str, calib: list[torch.Tensor],
           dev: torch.device, threads: int, workdir: Path, exporter: str, spinning: bool = True,
           int8_scheme: str = "auto") -> Deployed:
    if backend == "onnxruntime":
        return build_ort(model, example, precision, calib, dev, threads, workdir, exporter, spinning, int8_scheme)
    return build_torch(model, example, backend, precision, calib, dev, threads, workdir)
