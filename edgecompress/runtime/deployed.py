"""A model in the form it ships on (`Deployed`: run it, time it, what it really is) and the size of that form."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgecompress.runtime.cpu_features import cpu_flags
from edgecompress.runtime.latency import LatencyStats, device_name, measure_latency
from edgecompress.runtime.latency_paired import PairedStats, measure_paired
from edgecompress.utils import stable_hash


@dataclass
class Deployed:
    """A model in its shipped form: `run(x)` gives float32 logits on x's device; `timer(x)` feeds latency."""

    backend: str
    precision: str  # what it really is, e.g. "bf16", "fp32 (fp16 unsupported on cpu)", "int8 (ort qdq ...)"
    runtime_version: str
    provider: str  # execution provider / engine, e.g. CPUExecutionProvider, torch eager cpu
    size_bytes: int
    path: str | None
    device: str
    threads: int
    build_seconds: float = 0.0
    int8_scheme: str | None = None  # "u8s8" or "u8u8" for onnxruntime int8 (see INT8_SCHEMES)
    _call: Callable[[Any], Any] = field(default=None, repr=False)  # type: ignore[assignment]
    _prepare: Callable[[torch.Tensor], Any] = field(default=None, repr=False)  # type: ignore[assignment]
    _to_tensor: Callable[[Any], torch.Tensor] = field(default=None, repr=False)  # type: ignore[assignment]
    _prepare_array: Callable[[np.ndarray], Any] | None = field(default=None, repr=False)  # numpy in, no torch

    @property
    def base_precision(self) -> str:
        """The precision without its note: fp32, fp16, bf16 or int8."""
        return self.precision.split()[0]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits for a batch `x` (N, C, H, W), on the same device as `x`."""
        with torch.inference_mode():
            out = self._to_tensor(self._call(self._prepare(x)))
        return out.float().to(x.device)

    def run_array(self, a: np.ndarray) -> np.ndarray:
        """Float32 logits (numpy) for an N x C x H x W float32 array, for array-in/array-out serving.

        ONNX Runtime: the session is called on the array directly (no torch dispatch). Torch backends:
        the array is wrapped (no copy) and the model runs under inference_mode.
        """
        if self._prepare_array is not None:
            out = self._call(self._prepare_array(a))
        else:
            with torch.inference_mode():
                out = self._call(self._prepare(torch.from_numpy(a)))
        if isinstance(out, torch.Tensor):
            return out.float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    def timer(self, x: torch.Tensor) -> Callable[[], Any]:
        """A zero-argument callable running one batch with the input already in the runtime's form."""
        prepared = self._prepare(x)
        call = self._call
        return lambda: call(prepared)

    def measure(self, x: torch.Tensor, **kwargs: Any) -> LatencyStats:
        """Latency of one batch `x` on this deployment (kwargs go to measure_latency)."""
        kwargs.setdefault("threads", self.threads)
        clock = "host" if self.backend == "onnxruntime" else "auto"  # ORT calls block until done
        return measure_latency(
            self.timer(x),
            batch_size=int(x.shape[0]),
            device=self.device,
            backend=self.backend,
            runtime_version=self.runtime_version,
            clock=clock,
            **kwargs,
        )

    def measure_paired(self, x: torch.Tensor, ref: Deployed, ref_x: torch.Tensor, **kwargs: Any) -> PairedStats:
        """Latency of one batch `x` interleaved with `ref` on `ref_x` (runtime/latency_paired.py measure_paired).

        `ref` is the reference deployed the same way (same device; kwargs go to measure_paired)."""
        if torch.device(ref.device) != torch.device(self.device):
            raise ValueError(f"ref runs on {ref.device}, the model on {self.device}: measure_paired needs one device")
        kwargs.setdefault("threads", self.threads)
        clock = "host" if "onnxruntime" in (self.backend, ref.backend) else "auto"
        return measure_paired(
            self.timer(x),
            ref.timer(ref_x),
            batch_size=int(x.shape[0]),
            device=self.device,
            backend=self.backend,
            runtime_version=self.runtime_version,
            clock=clock,
            **kwargs,
        )

    def calibration_key(self, shape: tuple[int, ...], batch_size: int) -> dict[str, Any]:
        """What a reference's calibrated latency depends on: machine, runtime, threads, shapes, precision."""
        flags = sorted(cpu_flags())
        return {"device": str(self.device), "device_name": device_name(self.device),
                "cpu_flags": stable_hash(flags, 16) if flags else "", "backend": self.backend,
                "provider": self.provider, "threads": self.threads, "batch_size": int(batch_size),
                "shape": [int(v) for v in shape], "precision": self.precision,
                "runtime_version": self.runtime_version, "torch_version": torch.__version__}


def serialized_size(obj: Any) -> int:
    """Bytes of a model's shipped form: a file path, raw bytes, an onnx.ModelProto, or an nn.Module.

    An nn.Module is measured as its torch.save'd state dict (what model.pt holds).
    """
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.is_file():
            raise ValueError(f"obj: no such file {path} (serialized_size)")
        return path.stat().st_size
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, nn.Module):
        buf = io.BytesIO()
        torch.save(obj.state_dict(), buf)
        return buf.getbuffer().nbytes
    if hasattr(obj, "SerializeToString"):  # onnx.ModelProto without importing onnx here
        return len(obj.SerializeToString())
    raise ValueError(f"obj: cannot size an object of type {type(obj).__name__} (serialized_size)")
