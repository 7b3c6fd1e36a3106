"""Cost model: MACs against a hand count, BitOPs/param bytes, pruning and resolution effects, sizes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from edgecompress.evaluators.cost import count_costs, count_macs, count_params
from edgecompress.evaluators.models import create_model
from edgecompress.runtime.deployed import serialized_size


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # bias
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # depthwise
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


# hand count at 8x8 input:
#   conv1 4x8x8 outputs x (1*3*3) = 2304; conv2 8x4x4 x (4*3*3) = 4608; depthwise 8x4x4 x (1*3*3) = 1152;
#   linear 10 x 8 = 80
HAND_MACS_8PX = 2304 + 4608 + 1152 + 80
#   conv1 36+4, conv2 288, bn 8+8, depthwise 72, linear 80+10
HAND_PARAMS = 40 + 288 + 16 + 72 + 90


def test_macs_and_params_match_hand_count() -> None:
    net = tiny_net()
    assert count_macs(net, (1, 8, 8)) == HAND_MACS_8PX
    assert count_params(net) == HAND_PARAMS


def test_macs_are_per_image_and_scale_with_resolution() -> None:
    net = tiny_net()
    assert count_macs(net, (5, 1, 8, 8)) == HAND_MACS_8PX
    # every conv output has 4x the positions at 16 px; the classifier is unchanged
    assert count_macs(net, (1, 16, 16)) == 4 * (HAND_MACS_8PX - 80) + 80


def test_bitops_and_param_bytes_follow_bits() -> None:
    net = tiny_net()
    c32 = count_costs(net, (1, 8, 8))
    assert c32 == {"macs": HAND_MACS_8PX, "params": HAND_PARAMS, "param_bytes": HAND_PARAMS * 4,
                   "bitops": HAND_MACS_8PX * 32 * 32}
    c48 = count_costs(net, (1, 8, 8), w_bits=4, a_bits=8)
    assert c48["param_bytes"] == HAND_PARAMS // 2
    assert c48["bitops"] == HAND_MACS_8PX * 4 * 8


def test_counting_keeps_training_mode_and_weights() -> None:
    net = tiny_net().train()
    before = [p.clone() for p in net.parameters()]
    count_costs(net, (1, 8, 8))
    assert net.training
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_macs_fall_when_channels_are_removed() -> None:
    import torch_pruning as tp

    model = create_model("resnet8", num_classes=10, in_chans=1).eval()
    full = count_costs(model, (1, 28, 28))
    example = torch.randn(1, 1, 28, 28)
    pruner = tp.pruner.BasePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()
    pruned = count_costs(model, (1, 28, 28))
    assert pruned["macs"] < 0.4 * full["macs"]  # ~quadratic in width
    assert pruned["params"] < 0.4 * full["params"]
    narrow = create_model("resnet8", num_classes=10, in_chans=1, widths=(8, 16, 32))
    assert count_macs(narrow, (1, 28, 28)) < full["macs"]


def test_serialized_size_of_each_form(tmp_path: Path) -> None:
    net = tiny_net()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    assert serialized_size(net) == buf.getbuffer().nbytes
    f = tmp_path / "m.pt"
    f.write_bytes(b"x" * 1234)
    assert serialized_size(f) == 1234 and serialized_size(str(f)) == 1234
    assert serialized_size(b"abc") == 3
    assert serialized_size(nn.Linear(100, 100)) > serialized_size(nn.Linear(10, 10))
    onnx = pytest.importorskip("onnx")
    proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    assert serialized_size(proto) == len(proto.SerializeToString())


def test_bad_inputs_name_the_argument(tmp_path: Path) -> None:
    net = tiny_net()
    with pytest.raises(ValueError, match="w_bits"):
        count_costs(net, (1, 8, 8), w_bits=12)
    with pytest.raises(ValueError, match="input_shape"):
        count_macs(net, (8, 8))
    with pytest.raises(ValueError, match="no such file"):
        serialized_size(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="cannot size"):
        serialized_size(3.5)
