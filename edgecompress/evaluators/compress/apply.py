"""Apply the structural part of a CompressionConfig: depth, then width (no fine-tune, no quantisation)."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from edgecompress.evaluators.compress.depth import DEPTH_ATTR, DROPPED_ATTR, apply_depth, stage_blocks
from edgecompress.evaluators.compress.prune import count_macs_params, prune_model
from edgecompress.evaluators.structure import ensure_structure
from edgecompress.spaces.config import CompressionConfig


def compress_model(
    base: nn.Module,
    config: CompressionConfig,
    example_inputs: torch.Tensor,
    taylor_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Deep-copy `base`, keep `config.stage_depth` blocks per stage, then prune `config.stage_prune`.

    Returns the compressed model and a report: macs/params before (base), after depth and after width,
    asked and achieved pruning ratios, blocks per stage before and kept (with kept original indices).
    The evaluator fine-tunes and quantises afterwards.
    """
    ensure_structure(base, example_inputs)
    model = copy.deepcopy(base)
    macs_before, params_before = count_macs_params(model, example_inputs)
    blocks_before = stage_blocks(model)
    blocks_kept = config.stage_depth(blocks_before)
    if blocks_kept != blocks_before:
        apply_depth(model, blocks_kept)
    macs_depth, params_depth = count_macs_params(model, example_inputs)

    ratios = config.stage_prune(len(ensure_structure(model).stages))
    prune = prune_model(
        model,
        example_inputs,
        ratios,
        round_to=config.round_to,
        importance=config.importance,
        taylor_batch=taylor_batch,
    )
    report: dict[str, Any] = {
        "macs_before": macs_before,
        "params_before": params_before,
        "macs_after_depth": macs_depth,
        "params_after_depth": params_depth,
        "macs_after": prune.macs_after,
        "params_after": prune.params_after,
        "prune_asked": ratios,
        "achieved_prune": prune.achieved_ratio,
        "achieved_prune_per_stage": prune.achieved_per_stage,
        "blocks_before": blocks_before,
        "blocks_kept": blocks_kept,
        "kept_block_indices": getattr(model, DEPTH_ATTR, None),
        "dropped_blocks": getattr(model, DROPPED_ATTR, None),
        "round_to": config.round_to,
        "importance": config.importance,
    }
    return model, report
