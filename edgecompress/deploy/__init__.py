"""Deployment: the runtimes a model ships on, and turning a study's trial into shipped, checked files.

Layers of one package (see pyproject.toml's import-linter contract):
    runtime, preprocess, latency
                       below the evaluators: ONNX Runtime / torch / torch.compile backends (`deploy` in runtime,
                       built by runtime_ort / runtime_torch into a `Deployed`), int8 settings (schemes for the
                       CPU in cpu_features, calibration, session options), sub-8-bit estimates (sub8bit),
                       latency measurement. The evaluator measures
                       every candidate through them. `preprocess`: each dataset loader's preprocessing as data
                       (`Preprocess`), its PIL + numpy reference and its ONNX graph (`with_preprocessing`).
    export, retarget   above results: pick a trial of a study (export_choice), export it with its exact
                       preprocessing (export), check every file (export_check), write config.yaml
                       (export_config); re-measure a study on another device (retarget).
Names are imported on first use (PEP 562), so importing one layer never loads the other.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "Deployed": "deployed", "deploy": "runtime", "estimate_latency": "sub8bit", "estimate_sub8bit": "sub8bit",
    "export_onnx": "runtime_ort", "ort_session_options": "runtime_ort", "resolve_int8_scheme": "cpu_features",
    "serialized_size": "deployed", "INT8_SCHEMES": "cpu_features",
    "Preprocess": "preprocess", "preprocessing_graph": "preprocess", "with_preprocessing": "preprocess",
    "LatencyStats": "latency", "measure_latency": "latency", "device_name": "latency",
    "ExportError": "export_check", "ExportResult": "export_check", "ModelCheck": "export_check",
    "PreprocessCheck": "export_check", "choose_trial": "export_choice", "export_trial": "export",
    "load_export_config": "export_config",
    "RetargetSummary": "retarget", "RetargetedTrial": "retarget", "retarget_study": "retarget",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"edgecompress.deploy.{_API[name]}"), name)
    raise AttributeError(f"module 'edgecompress.deploy' has no attribute {name!r}")
