"""Compression operators on zoo models: depth, structured width pruning, fake quantisation, save/load."""

from __future__ import annotations

from edgecompress.evaluators.compress.apply import compress_model
from edgecompress.evaluators.compress.depth import apply_depth, is_droppable, keep_blocks, stage_blocks
from edgecompress.evaluators.compress.io import load_compressed, save_compressed, weights_hash
from edgecompress.evaluators.compress.prune import (
    PruneLimit,
    PruneReport,
    count_macs_params,
    prune_limits,
    prune_model,
)
from edgecompress.evaluators.compress.quantize import (
    FakeQuantConv2d,
    FakeQuantLinear,
    apply_fake_quant,
    calibrate,
    quantize_activation,
    quantize_weight,
)

__all__ = [
    "FakeQuantConv2d",
    "FakeQuantLinear",
    "PruneLimit",
    "PruneReport",
    "apply_depth",
    "apply_fake_quant",
    "calibrate",
    "compress_model",
    "count_macs_params",
    "is_droppable",
    "keep_blocks",
    "load_compressed",
    "prune_limits",
    "prune_model",
    "quantize_activation",
    "quantize_weight",
    "save_compressed",
    "weights_hash",
    "stage_blocks",
]
