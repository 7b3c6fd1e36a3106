"""Depth compression: drop identity-shaped residual blocks from each stage without breaking shapes.

A zoo model's stage (its registered nn.Sequential): the first block is always kept (it may downsample or change
channels); every later block whose output has its input's shape and that adds a residual (ResNet blocks
with no `downsample`, MobileNetV2 inverted residuals with `use_res_connect`) is *droppable*; any other
block is kept. Any other model: the droppable blocks are the modules its structure found adding their input to
their output (evaluators/structure.py), in runs of consecutive siblings; a dropped block becomes nn.Identity.
The "blocks" of a stage are counted as 1 (the fixed part) + its droppable blocks, so keeping
k blocks keeps k-1 droppable ones.

Which droppable blocks are kept (positional criterion, no data needed): droppable blocks form runs
separated by fixed blocks (one run per ResNet stage; several in MobileNetV2's single `features` stage).
Blocks are removed one at a time from the end of the run that still has the most blocks (ties: the later
run), so a ResNet stage keeps its first k-1 residual blocks and MobileNetV2 thins all resolutions evenly.
Removing the last block of a run is the usual choice because residual nets are most robust to it.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch.nn as nn

from edgecompress.errors import CompressionError
from edgecompress.evaluators.structure import ensure_structure, find_module

#: attribute set on a depth-reduced model: kept block indices per stage, in the ORIGINAL numbering (zoo), or the
#: names of the dropped blocks (any other model)
DEPTH_ATTR = "ec_depth_kept"
DROPPED_ATTR = "ec_depth_dropped"


def model_stages(model: nn.Module) -> list[nn.Module]:
    """A zoo model's stage modules, in order (the nn.Sequential whose blocks depth counts by position)."""
    stages = ensure_structure(model).stages
    return [model.get_submodule(st.module) for st in stages if st.module]


def _is_zoo(model: nn.Module) -> bool:
    return any(st.module for st in ensure_structure(model).stages)


def _generic_runs(model: nn.Module) -> list[list[list[str]]]:
    """Per stage, the runs of droppable blocks still present (a dropped one is an nn.Identity)."""
    out = []
    for st in ensure_structure(model).stages:
        runs = [[b for b in run if not isinstance(find_module(model, b), nn.Identity)] for run in st.runs]
        out.append([r for r in runs if r])
    return out




def is_droppable(block: nn.Module) -> bool:
    """True when `block` is a residual block whose output shape equals its input shape."""
    if hasattr(block, "use_res_connect"):  # torchvision InvertedResidual
        return bool(block.use_res_connect)
    if hasattr(block, "downsample"):  # ResNet blocks: a projection exists iff the shape changes
        return block.downsample is None
    return False


def _droppable_runs(stage: nn.Sequential) -> list[list[int]]:
    """Indices of droppable blocks grouped into runs of consecutive droppable blocks (first never)."""
    runs: list[list[int]] = []
    current: list[int] = []
    for i, block in enumerate(stage):
        if i > 0 and is_droppable(block):
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def stage_blocks(model: nn.Module) -> list[int]:
    """Blocks per stage as depth counts them: 1 (first + fixed blocks) + the droppable blocks."""
    if not _is_zoo(model):
        return [1 + sum(len(r) for r in runs) for runs in _generic_runs(model)]
    return [1 + sum(len(r) for r in _droppable_runs(stage)) for stage in model_stages(model)]


def _drop_generic(model: nn.Module, blocks_per_stage: list[int]) -> nn.Module:
    """Any model: replace droppable blocks by nn.Identity, from the end of each stage's longest run."""
    dropped: list[str] = list(getattr(model, DROPPED_ATTR, None) or [])
    for runs, want in zip(_generic_runs(model), blocks_per_stage, strict=True):
        runs = [list(r) for r in runs]
        for _ in range(sum(len(r) for r in runs) - (want - 1)):
            longest = max(range(len(runs)), key=lambda j: (len(runs[j]), j))
            dropped.append(runs[longest].pop())
    for name in dropped:
        if not isinstance(find_module(model, name), nn.Identity):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    setattr(model, DROPPED_ATTR, dropped)
    return model


def drop_blocks(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace the named blocks by nn.Identity (replaying a saved depth reduction of a non-zoo model)."""
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    setattr(model, DROPPED_ATTR, list(names))
    return model


def _stage_name(model: nn.Module, stage: nn.Module | None, index: int) -> str:
    if stage is None:
        return f"stage {index} ({ensure_structure(model).stages[index].name})"
    for name, module in model.named_modules():
        if module is stage:
            return f"stage {index} ({name})"
    return f"stage {index}"


def kept_indices(stage: nn.Sequential, keep: int) -> list[int]:
    """Indices of the blocks of `stage` that survive when `keep` blocks are kept (see module doc)."""
    runs = [list(r) for r in _droppable_runs(stage)]
    to_drop = sum(len(r) for r in runs) - (keep - 1)
    dropped: set[int] = set()
    for _ in range(to_drop):
        longest = max(range(len(runs)), key=lambda j: (len(runs[j]), j))
        dropped.add(runs[longest].pop())
    return [i for i in range(len(stage)) if i not in dropped]


def _replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for module in model.modules():
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)
                return
    raise CompressionError(f"stage module {type(old).__name__} not found in {type(model).__name__}")


def keep_blocks(model: nn.Module, kept: list[list[int]]) -> nn.Module:
    """Keep exactly the blocks `kept[s]` (indices into the current stage s); records the original indices."""
    stages = model_stages(model)
    if len(kept) != len(stages):
        raise CompressionError(f"depth: {len(kept)} stage index lists for a model with {len(stages)} stages")
    previous: list[list[int]] | None = getattr(model, DEPTH_ATTR, None)
    original: list[list[int]] = []
    for s, (stage, idx) in enumerate(zip(stages, kept, strict=True)):
        if not idx or any(not 0 <= i < len(stage) for i in idx) or 0 not in idx:
            raise CompressionError(
                f"depth: invalid kept blocks {idx} for {_stage_name(model, stage, s)} of {len(stage)} blocks"
            )
        new_stage = nn.Sequential(*[stage[i] for i in idx])
        if len(idx) != len(stage):
            _replace_module(model, stage, new_stage)
        original.append([previous[s][i] for i in idx] if previous else list(idx))
    setattr(model, DEPTH_ATTR, original)
    return model


def apply_depth(model: nn.Module, blocks_per_stage: list[int]) -> nn.Module:
    """Keep `blocks_per_stage[s]` blocks in stage s (counted as in `stage_blocks`); modifies `model` in place.

    Returns the same model (deepcopy first to keep the original). Asking for 0 blocks or more than a stage
    has raises CompressionError naming the stage.
    """
    available = stage_blocks(model)
    stages = model_stages(model) if _is_zoo(model) else [None] * len(available)
    if len(blocks_per_stage) != len(stages):
        raise CompressionError(
            f"depth: {len(blocks_per_stage)} block counts given for a model with {len(stages)} stages "
            f"(blocks per stage: {available})"
        )
    kept: list[list[int]] = []
    for s, (stage, want, have) in enumerate(zip(stages, blocks_per_stage, available, strict=True)):
        if not isinstance(want, numbers.Integral) or isinstance(want, bool) or not 1 <= want <= have:
            raise CompressionError(
                f"depth: {_stage_name(model, stage, s)} has {have} droppable-structure blocks, "
                f"cannot keep {want!r} (must be 1..{have})"
            )
        if stage is not None:
            kept.append(kept_indices(stage, int(want)))
    return keep_blocks(model, kept) if kept else _drop_generic(model, [int(b) for b in blocks_per_stage])


def depth_report(model: nn.Module) -> dict[str, Any]:
    """Blocks per stage (as counted by `stage_blocks`) and the kept original indices, if reduced."""
    return {"blocks_per_stage": stage_blocks(model), "kept_indices": getattr(model, DEPTH_ATTR, None),
            "dropped_blocks": getattr(model, DROPPED_ATTR, None)}
