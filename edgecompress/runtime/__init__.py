"""The forms a model ships on and how long they take: ONNX Runtime / eager torch / torch.compile backends
(`deploy` in backend, built by backend_ort / backend_torch into a `Deployed`), int8 schemes for the CPU
(cpu_features), sub-8-bit estimates (sub8bit), each dataset's preprocessing as data (preprocess), and latency
measurement (latency, latency_paired, latency_reference) under the machine's compute lock (compute_lock).

Below the evaluators (import-linter layers in pyproject.toml): the evaluator measures every candidate through
these. Names are imported on first use (PEP 562): `import edgecompress.runtime` loads no backend.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "Deployed": "deployed", "deploy": "backend", "estimate_latency": "sub8bit", "estimate_sub8bit": "sub8bit",
    "export_onnx": "backend_ort", "ort_session_options": "backend_ort", "resolve_int8_scheme": "cpu_features",
    "serialized_size": "deployed", "INT8_SCHEMES": "cpu_features",
    "Preprocess": "preprocess", "preprocessing_graph": "preprocess", "with_preprocessing": "preprocess",
    "LatencyStats": "latency", "measure_latency": "latency", "device_name": "latency",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"edgecompress.runtime.{_API[name]}"), name)
    raise AttributeError(f"module 'edgecompress.runtime' has no attribute {name!r}")
