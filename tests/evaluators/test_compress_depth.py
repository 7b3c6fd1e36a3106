"""Depth compression on every zoo model: shapes survive, blocks and MACs fall, bad counts are refused."""

from __future__ import annotations

import copy

import pytest
import torch

from edgecompress.errors import CompressionError
from edgecompress.evaluators.compress import apply_depth, count_macs_params, keep_blocks, stage_blocks
from edgecompress.evaluators.models import list_models, model_stages
from edgecompress.testing import tiny_model


@pytest.mark.parametrize("name", list_models())
def test_depth_keeps_output_shape_and_reduces_blocks_and_macs(name: str) -> None:
    model, x = tiny_model(name)
    before = stage_blocks(model)
    modules_before = sum(len(s) for s in model_stages(model))
    macs_before, _ = count_macs_params(model, x)
    keep = [1] * len(before)
    apply_depth(model, keep)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    assert stage_blocks(model) == keep
    dropped = sum(before) - sum(keep)
    assert sum(len(s) for s in model_stages(model)) == modules_before - dropped
    macs_after, _ = count_macs_params(model, x)
    if dropped:
        assert macs_after < macs_before
    else:
        assert macs_after == macs_before


@pytest.mark.parametrize("name", list_models())
def test_zero_or_too_many_blocks_is_refused_naming_the_stage(name: str) -> None:
    model, _ = tiny_model(name)
    blocks = stage_blocks(model)
    too_many = list(blocks)
    too_many[-1] += 1
    with pytest.raises(CompressionError, match=f"stage {len(blocks) - 1}"):
        apply_depth(model, too_many)
    zero = list(blocks)
    zero[0] = 0
    with pytest.raises(CompressionError, match="stage 0"):
        apply_depth(model, zero)
    with pytest.raises(CompressionError, match="stages"):
        apply_depth(model, blocks + [1])


def test_resnet_stage_keeps_its_first_blocks() -> None:
    model, _ = tiny_model("resnet20")
    assert stage_blocks(model) == [3, 3, 3]
    firsts = [list(stage)[:2] for stage in model_stages(model)]
    apply_depth(model, [2, 1, 3])
    stages = model_stages(model)
    assert [len(s) for s in stages] == [2, 1, 3]
    assert list(stages[0]) == firsts[0]
    assert stages[1][0] is firsts[1][0]
    assert model.ec_depth_kept == [[0, 1], [0], [0, 1, 2]]


def test_dropping_a_zero_residual_block_does_not_change_outputs() -> None:
    """A residual block whose branch outputs 0 is the identity: removing it must leave the function."""
    model, x = tiny_model("resnet20")
    with torch.no_grad():
        for stage in model_stages(model):
            last = stage[-1]
            last.bn2.weight.zero_()
            last.bn2.bias.zero_()
    ref = model(x)
    apply_depth(model, [2, 2, 2])
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_mobilenet_drops_only_residual_blocks_evenly() -> None:
    model, x = tiny_model("mobilenet_v2")
    features = model_stages(model)[0]
    droppable = [i for i, b in enumerate(features) if getattr(b, "use_res_connect", False)]
    assert stage_blocks(model) == [1 + len(droppable)]
    fixed = [b for i, b in enumerate(features) if i not in droppable]
    apply_depth(model, [6])  # keep 5 of the 10 residual blocks
    kept = model.ec_depth_kept[0]
    assert all(i in kept for i in range(len(features)) if i not in droppable)  # fixed blocks all stay
    assert len([i for i in kept if i in droppable]) == 5
    # every run of residual blocks (one per resolution/width) keeps at least one block
    runs: list[list[int]] = []
    for i in droppable:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    assert all(any(i in kept for i in run) for run in runs)
    assert all(any(b is f for b in model_stages(model)[0]) for f in fixed)
    assert model(x).shape == (2, 10)


def test_depth_applied_twice_records_original_indices() -> None:
    model, x = tiny_model("resnet56")
    apply_depth(model, [5, 9, 2])
    apply_depth(model, [3, 1, 2])
    assert model.ec_depth_kept == [[0, 1, 2], [0], [0, 1]]
    assert model(x).shape == (2, 10)
    fresh, _ = tiny_model("resnet56")
    keep_blocks(fresh, model.ec_depth_kept)
    assert [len(s) for s in model_stages(fresh)] == [3, 1, 2]


def test_keep_blocks_refuses_dropping_the_first_block() -> None:
    model, _ = tiny_model("resnet20")
    with pytest.raises(CompressionError, match="stage 1"):
        keep_blocks(copy.deepcopy(model), [[0], [1, 2], [0]])
