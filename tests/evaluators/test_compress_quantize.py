"""Fake quantisation: low bits change outputs, 32 bits does not, STE gradients allow QAT."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.errors import CompressionError
from edgecompress.evaluators.compress import (
    FakeQuantConv2d,
    apply_fake_quant,
    calibrate,
    count_macs_params,
    quantize_activation,
    quantize_weight,
)
from edgecompress.evaluators.models import list_models
from edgecompress.testing import tiny_model


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list_models())
def test_four_bits_change_outputs_and_32_bits_do_not(name: str) -> None:
    model, x = tiny_model(name)
    with torch.no_grad():
        ref = model(x)
        same = apply_fake_quant(model, 32, 32)
        assert same is model and torch.equal(same(x), ref)
        q4 = apply_fake_quant(model, 4, 4)  # in place: no copy of the big models
        calibrate(q4, [x])
        out4 = q4(x)
    assert out4.shape == ref.shape and torch.isfinite(out4).all()
    assert _rel_err(out4, ref) > 1e-3
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in q4.modules())  # every layer converted


def test_error_shrinks_with_more_bits() -> None:
    model, x = tiny_model("resnet20")
    errs = {}
    for bits in (4, 6, 8):
        q = apply_fake_quant(copy.deepcopy(model), bits, bits)
        calibrate(q, [x])
        with torch.no_grad():
            errs[bits] = _rel_err(q(x), model(x))
    assert errs[8] < errs[6] < errs[4]
    assert errs[8] < 0.05


def test_weight_quantisation_is_per_channel_symmetric() -> None:
    w = torch.randn(4, 3, 3, 3)
    w[0] *= 100.0  # one large channel must not crush the others to zero
    q = quantize_weight(w, 4)
    for c in range(4):
        levels = torch.unique(q[c])
        assert len(levels) <= 15  # -7..7
        step = w[c].abs().max() / 7
        assert torch.allclose(levels / step, torch.round(levels / step), atol=1e-4)
        assert (q[c] - w[c]).abs().max() <= step / 2 + 1e-6
    assert q[1].abs().max() > 0


def test_activation_quantisation_uses_the_calibrated_range() -> None:
    x = torch.linspace(-1.0, 3.0, 1000)
    q = quantize_activation(x, torch.tensor(-1.0), torch.tensor(3.0), 4)
    assert len(torch.unique(q)) <= 16
    assert (q - x).abs().max() <= 4.0 / 15 / 2 + 1e-5
    clipped = quantize_activation(torch.tensor([10.0]), torch.tensor(-1.0), torch.tensor(3.0), 4)
    assert float(clipped) == pytest.approx(3.0, abs=0.2)


def test_calibrate_sets_ranges_from_the_batches() -> None:
    model, x = tiny_model("resnet8")
    q = apply_fake_quant(model, 4, 4)
    x2 = x * 3
    assert calibrate(q, [x, (x2, torch.zeros(2))]) == 2
    assert float(q.conv1.act_min) == pytest.approx(float(torch.minimum(x.min(), x2.min())))
    assert float(q.conv1.act_max) == pytest.approx(float(torch.maximum(x.max(), x2.max())))
    with pytest.raises(CompressionError, match="no batches"):
        calibrate(q, [])


def test_qat_gradients_flow_and_training_lowers_the_loss() -> None:
    model, _ = tiny_model("resnet8")
    q = apply_fake_quant(model, 4, 4, qat=True)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    calibrate(q, [x])
    q.train()
    opt = torch.optim.SGD(q.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(q(x), y)
        loss.backward()
        assert q.conv1.weight.grad is not None and q.conv1.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


def test_without_qat_parameters_are_frozen() -> None:
    model, _ = tiny_model("resnet8")
    q = apply_fake_quant(model, 6, 6)
    assert not any(p.requires_grad for p in q.parameters())
    assert q.ec_fake_quant == {"w_bits": 6, "a_bits": 6, "qat": False}


def test_fake_quant_layers_still_count_as_conv_for_macs() -> None:
    model, x = tiny_model("resnet8")
    macs, params = count_macs_params(model, x)
    q = apply_fake_quant(copy.deepcopy(model), 4, 4)
    assert isinstance(q.conv1, FakeQuantConv2d) and isinstance(q.conv1, nn.Conv2d)
    assert count_macs_params(q, x) == (macs, params)


@pytest.mark.parametrize("bits", [1, 9, 12, 64])
def test_invalid_bits_are_refused(bits: int) -> None:
    model, _ = tiny_model("resnet8")
    with pytest.raises(CompressionError, match="w_bits"):
        apply_fake_quant(model, bits, 8)


def test_every_bit_width_check_accepts_exactly_allowed_bits() -> None:
    """CompressionConfig, fake quantisation and count_costs share spaces.config.ALLOWED_BITS."""
    from pydantic import ValidationError

    from edgecompress.evaluators.cost import count_costs
    from edgecompress.spaces.config import ALLOWED_BITS, CompressionConfig

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 1, 8, 8))
    for bits in [*range(0, 34), 64, True]:
        ok = {}
        try:
            CompressionConfig(w_bits=bits, a_bits=8)
            ok["config"] = True
        except ValidationError:
            ok["config"] = False
        try:
            apply_fake_quant(copy.deepcopy(net), bits, 8)
            ok["quantize"] = True
        except CompressionError:
            ok["quantize"] = False
        try:
            count_costs(net, (1, 8, 8), w_bits=bits, a_bits=8)
            ok["cost"] = True
        except ValueError:
            ok["cost"] = False
        want = bits in ALLOWED_BITS and not isinstance(bits, bool)
        assert ok == {"config": want, "quantize": want, "cost": want}, bits


def test_quantising_twice_is_refused() -> None:
    model, _ = tiny_model("resnet8")
    apply_fake_quant(model, 4, 4)
    with pytest.raises(CompressionError, match="already"):
        apply_fake_quant(model, 4, 4)


@pytest.mark.needs("cuda")
def test_fake_quant_on_cuda_matches_cpu() -> None:
    model, x = tiny_model("resnet8")
    q = apply_fake_quant(model, 4, 4)
    calibrate(q, [x])
    with torch.no_grad():
        cpu = q(x)
        gpu = q.cuda()(x.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3)
