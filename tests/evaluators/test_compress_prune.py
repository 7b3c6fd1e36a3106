"""Structured width pruning (Torch-Pruning) and compress_model on every zoo model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from edgecompress.errors import CompressionError, ConfigError
from edgecompress.evaluators.compress import compress_model, prune_model, stage_blocks
from edgecompress.evaluators.models import (
    classifier_layer,
    list_models,
    model_stages,
)
from edgecompress.spaces.config import CompressionConfig
from edgecompress.testing import tiny_model


def conv_channels(module: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in module.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("name", list_models())
def test_half_width_prune_keeps_shape_and_roughly_quarters_macs(name: str) -> None:
    model, x = tiny_model(name)
    head_out = classifier_layer(model).out_features
    report = prune_model(model, x, 0.5)
    out = model(x)
    assert out.shape == (2, 10) and classifier_layer(model).out_features == head_out
    assert torch.isfinite(out).all()
    # conv MACs scale with in x out channels: halving both quarters them (stem input and head are fixed)
    assert 0.15 < report.macs_after / report.macs_before < 0.40
    assert report.params_after < 0.45 * report.params_before
    assert report.achieved_ratio == pytest.approx(0.5, abs=0.03)
    assert report.ratio_asked == [0.5] * len(model_stages(model))


def test_per_stage_ratios_prune_only_their_stage() -> None:
    model, x = tiny_model("resnet20")
    before = conv_channels(model)
    report = prune_model(model, x, [0.0, 0.0, 0.5])
    after = conv_channels(model)
    for n, c in before.items():
        if n.startswith("stages.2."):
            assert after[n] == c // 2, n
        else:
            assert after[n] == c, n  # stem follows stage 0, which is not pruned
    assert report.achieved_per_stage == pytest.approx([0.0, 0.0, 0.5])
    assert model(x).shape == (2, 10)


def test_stem_follows_stage_zero() -> None:
    model, x = tiny_model("resnet20")
    prune_model(model, x, [0.5, 0.0, 0.0])
    assert model.conv1.out_channels == 8
    assert model.stages[1][0].conv1.out_channels == 32


def test_round_to_rounds_channels_down_and_reports_achieved_ratio() -> None:
    model, x = tiny_model("resnet20")
    report = prune_model(model, x, 0.3, round_to=8)
    for n, c in conv_channels(model).items():
        assert c % 8 == 0, (n, c)  # the stem too: it follows stage 0
    # 16 -> 11 -> 8, 32 -> 22 -> 16, 64 -> 44 -> 40: more is removed than asked
    assert report.achieved_ratio > 0.3
    assert report.achieved_per_stage == pytest.approx([0.5, 0.5, 0.375])


def test_magnitude_importance_removes_the_smallest_channels() -> None:
    model, x = tiny_model("resnet8")
    block = model.stages[2][0]
    with torch.no_grad():
        block.conv1.weight[:32] *= 1e-3
        block.bn1.weight[:32] *= 1e-3
        block.conv2.weight[:, :32] *= 1e-3
    strong = block.conv1.weight[32:].clone()
    prune_model(model, x, [0.0, 0.0, 0.5])
    assert block.conv1.out_channels == 32
    assert torch.equal(block.conv1.weight, strong)


def test_zero_ratio_is_a_no_op() -> None:
    model, x = tiny_model("resnet20")
    state = copy.deepcopy(model.state_dict())
    report = prune_model(model, x, 0.0)
    assert report.macs_after == report.macs_before and report.achieved_ratio == 0.0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("ratio", "round_to"), [(0.95, None), (0.5, 64)])
def test_ratio_emptying_a_layer_raises_naming_it(ratio: float, round_to: int | None) -> None:
    model, x = tiny_model("resnet8")
    before = conv_channels(model)
    with pytest.raises(CompressionError, match=r"remove all 16 output channels of layer 'conv1'"):
        prune_model(model, x, ratio, round_to=round_to)
    assert conv_channels(model) == before


def test_bad_arguments_are_refused() -> None:
    model, x = tiny_model("resnet8")
    with pytest.raises(CompressionError, match="3 stages"):
        prune_model(model, x, [0.5, 0.5])
    with pytest.raises(CompressionError, match="ratio"):
        prune_model(model, x, 1.0)
    with pytest.raises(CompressionError, match="taylor_batch"):
        prune_model(model, x, 0.5, importance="taylor")


def test_taylor_importance_prunes_with_a_batch() -> None:
    model, x = tiny_model("resnet8")
    batch = (torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)))
    report = prune_model(model, x, 0.5, importance="taylor", taylor_batch=batch)
    assert report.importance == "taylor" and report.achieved_ratio == pytest.approx(0.5)
    assert all(p.grad is None for p in model.parameters())  # gradients of the scoring pass are cleared
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_compress_model_applies_depth_then_width_on_a_copy(name: str) -> None:
    base, x = tiny_model(name)
    base_state = copy.deepcopy(base.state_dict())
    config = CompressionConfig(prune=0.5, depth=0.5)
    model, report = compress_model(base, config, x)
    assert all(torch.equal(v, base_state[k]) for k, v in base.state_dict().items())  # base untouched
    assert model(x).shape == (2, 10)
    assert report["blocks_kept"] == config.stage_depth(stage_blocks(base)) == stage_blocks(model)
    assert report["macs_after"] < report["macs_after_depth"] < report["macs_before"]
    assert report["params_after"] < report["params_before"]
    assert report["achieved_prune"] == pytest.approx(0.5, abs=0.03)
    assert report["kept_block_indices"] == model.ec_depth_kept


def test_compress_model_rejects_wrong_stage_count() -> None:
    base, x = tiny_model("resnet8")
    with pytest.raises(ConfigError, match="2 ratios"):
        compress_model(base, CompressionConfig(prune=(0.1, 0.2)), x)


@pytest.mark.parametrize("round_to", [None, 8])
@pytest.mark.parametrize("name", ["resnet8", "resnet20", "mobilenet_v2"])
def test_prune_limits_are_the_largest_ratios_the_pruner_accepts(name: str, round_to: int | None) -> None:
    """At each stage's limit the pruner keeps every layer; a little above it, it refuses naming that layer."""
    from edgecompress.evaluators.compress import prune_limits

    model, x = tiny_model(name)
    limits = prune_limits(model, round_to)
    assert len(limits) == len(model_stages(model))
    for s, lim in enumerate(limits):
        assert 0.0 < lim.ratio < 1.0 and lim.layer
        at = [0.0] * len(limits)
        at[s] = lim.ratio
        pruned = copy.deepcopy(model)
        prune_model(pruned, x, at, round_to=round_to)
        assert all(c >= 1 for c in conv_channels(pruned).values())
        over = [0.0] * len(limits)
        over[s] = min(lim.ratio + 0.02, 0.999)
        with pytest.raises(CompressionError, match=f"remove all {lim.channels} output channels of layer "
                                                   f"'{lim.layer}'"):
            prune_model(copy.deepcopy(model), x, over, round_to=round_to)
