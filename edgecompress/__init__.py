"""edgecompress: search the best compressed version of an image model for a device.

The verbs a user scripts, importable from here (loaded on first use, so `import edgecompress` stays light):

    study = edgecompress.Study.load("demo")            # a stored study, opened once (edgecompress/handle.py)
    best = study.select(max_latency=0.2); study.export("runs/export", edgecompress.ExportOptions(preprocess=True))

or the functions the handle drives:

    exp = edgecompress.load_experiment("configs/fmnist-quick.yaml")
    summary = edgecompress.run_search(exp, "demo", trials=24)
    df = edgecompress.study_to_frame(edgecompress.load_study("demo"))
    best = edgecompress.select(edgecompress.front(df), max_latency=0.2)   # or knee_point(front(df))
    edgecompress.export_trial("demo", "runs/export", trial=best.number)
    built = edgecompress.cascade_from_study("demo", "runs/cascade", min_accuracy=0.9)
    model = edgecompress.load_cascade("runs/cascade")
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# OpenMP threads that spin while waiting make torch up to 10x slower whenever another process shares the
# cores (measured here: 1.30 s vs 0.135 s per ResNet-8 training step). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from edgecompress.errors import EdgeCompressError  # noqa: E402

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first attribute access, PEP 562)
_API = {
    # experiments and configs
    "load_experiment": "edgecompress.spaces", "parse_experiment": "edgecompress.spaces",
    "ExperimentConfig": "edgecompress.spaces", "CompressionConfig": "edgecompress.spaces",
    "SearchSpace": "edgecompress.spaces",
    # models and evaluation
    "create_model": "edgecompress.evaluators", "list_models": "edgecompress.evaluators",
    "register_model": "edgecompress.evaluators", "list_datasets": "edgecompress.evaluators",
    "evaluate_config": "edgecompress.evaluators", "build_evaluator": "edgecompress.evaluators",
    "EvalResult": "edgecompress.evaluators",
    # search
    "run_search": "edgecompress.search", "run_ray_search": "edgecompress.search",
    "SearchSummary": "edgecompress.search",
    # a stored study and the verbs on it (the handle), with their option objects
    "Study": "edgecompress.handle", "ExportOptions": "edgecompress.handle", "CascadeOptions": "edgecompress.handle",
    "FinalizeOptions": "edgecompress.handle", "FrontOptions": "edgecompress.handle",
    # studies: loading, frame, the front
    "load_study": "edgecompress.study", "study_to_frame": "edgecompress.study", "front": "edgecompress.study",
    "front_ranks": "edgecompress.study", "hypervolume": "edgecompress.study",
    # choosing, reporting, exporting
    "select": "edgecompress.results", "knee_point": "edgecompress.results", "Selection": "edgecompress.results",
    "build_report": "edgecompress.results", "gains": "edgecompress.results", "front_gains": "edgecompress.results",
    "base_trial": "edgecompress.results",
    # deployment
    "export_trial": "edgecompress.export", "retarget_study": "edgecompress.export", "deploy": "edgecompress.runtime",
    # cascades
    "cascade_from_study": "edgecompress.cascade", "build_cascade": "edgecompress.cascade",
    "load_cascade": "edgecompress.cascade", "save_cascade": "edgecompress.cascade",
    "CascadeModel": "edgecompress.cascade",
}

__all__ = ["EdgeCompressError", "__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
