"""Turn one CompressionConfig into measured objectives: data, zoo, compression, training, latency, cost."""

from __future__ import annotations

from edgecompress.evaluators.base_model import BaseModel, get_base_model
from edgecompress.evaluators.data import DataBundle, list_datasets, load_data, register_dataset
from edgecompress.evaluators.evaluator import CompressionEvaluator, Evaluator, build_evaluator, evaluate_config
from edgecompress.evaluators.models import create_model, list_models, register_model
from edgecompress.evaluators.result import ARTEFACT_FILES, EvalResult
from edgecompress.evaluators.splits import calibration_batches, make_loader

__all__ = [
    "ARTEFACT_FILES",
    "BaseModel",
    "CompressionEvaluator",
    "DataBundle",
    "EvalResult",
    "Evaluator",
    "build_evaluator",
    "calibration_batches",
    "create_model",
    "evaluate_config",
    "get_base_model",
    "list_datasets",
    "list_models",
    "load_data",
    "make_loader",
    "register_dataset",
    "register_model",
]
