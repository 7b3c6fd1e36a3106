"""Fake quantisation (simulated low-bit arithmetic) for accuracy of sub-8-bit configs, and QAT.

Every Conv2d/Linear is replaced by a subclass (`FakeQuantConv2d`, `FakeQuantLinear`, same parameter
names, so state dicts, Torch-Pruning and MAC counters still see a Conv2d/Linear) that
- quantises its weight per output channel, symmetric, to w_bits (levels -(2^(b-1)-1)..2^(b-1)-1);
- quantises its input activation per tensor, affine (min/max range, so signed inputs such as the first
  layer's or MobileNetV2's linear bottlenecks work), to a_bits.
Both use torch's fake-quantize ops, whose backward is the straight-through estimator (gradient 1 inside
the range, 0 outside), so the model can be fine-tuned (QAT). Bits >= 32 are the identity; 16 bits
round-trips through float16 (16-bit is a float format in this project). Nothing here is faster than
fp32: latency of sub-8-bit models is estimated elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.errors import CompressionError
from edgecompress.spaces.config import ALLOWED_BITS

#: attribute set on a fake-quantised model: {"w_bits", "a_bits", "qat"}
FAKE_QUANT_ATTR = "ec_fake_quant"
_EMA = 0.9  # momentum of the activation range during QAT training


def _check_bits(name: str, bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ALLOWED_BITS:
        raise CompressionError(f"fake quantisation: {name} must be one of {list(ALLOWED_BITS)}, got {bits!r}")


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric fake quantisation of a weight tensor (STE gradient)."""
    if bits >= 32:
        return w
    if bits == 16:
        return w + (w.half().float() - w).detach()
    qmax = 2 ** (bits - 1) - 1
    max_abs = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
    scale = (max_abs / qmax).clamp_min(1e-12).float()
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax)


def quantize_activation(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-tensor affine fake quantisation of `x` to the range [lo, hi] (extended to contain 0)."""
    if bits >= 32:
        return x
    if bits == 16:
        return x + (x.half().float() - x).detach()
    lo = torch.clamp(lo.detach(), max=0.0)
    hi = torch.clamp(hi.detach(), min=0.0)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp_min(1e-12).float().reshape(1)
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax).to(torch.int32).reshape(1)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, qmax)


class _FakeQuantMixin:
    """Shared state: bit-widths, the activation range buffers and the observer switch."""

    w_bits: int
    a_bits: int
    qat: bool
    observing: bool
    act_min: torch.Tensor
    act_max: torch.Tensor
    act_init: torch.Tensor

    def _init_quant(self, w_bits: int, a_bits: int, qat: bool) -> None:
        self.w_bits, self.a_bits, self.qat, self.observing = w_bits, a_bits, qat, False
        device = self.weight.device  # type: ignore[attr-defined]
        self.register_buffer("act_min", torch.zeros((), device=device))  # type: ignore[attr-defined]
        self.register_buffer("act_max", torch.zeros((), device=device))  # type: ignore[attr-defined]
        self.register_buffer("act_init", torch.zeros((), dtype=torch.bool, device=device))  # type: ignore[attr-defined]

    def _range_known(self) -> bool:
        """Whether act_min/act_max hold a range (cached, so CUDA forwards do not sync on the buffer)."""
        known = getattr(self, "_known", None)
        if known is None:
            known = self._known = bool(self.act_init)
        return known

    def _set_known(self, value: bool) -> None:
        self.act_init.fill_(value)
        self._known = value

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[misc]
        self._known = None  # re-read act_init from the loaded buffer

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min(), x.detach().max()
        if self.observing or not self._range_known():
            # calibration (or first use without calibration): running min/max
            first = not self._range_known()
            self.act_min.copy_(lo if first else torch.minimum(self.act_min, lo))
            self.act_max.copy_(hi if first else torch.maximum(self.act_max, hi))
            self._set_known(True)
        elif self.qat and self.training:  # QAT: the range follows the activations (EMA)
            self.act_min.mul_(_EMA).add_((1 - _EMA) * lo)
            self.act_max.mul_(_EMA).add_((1 - _EMA) * hi)

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits < 16:
            self._observe(x)
        return quantize_activation(x, self.act_min, self.act_max, self.a_bits)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w_bits={self.w_bits}, a_bits={self.a_bits}"  # type: ignore[misc]


class FakeQuantConv2d(_FakeQuantMixin, nn.Conv2d):
    """Conv2d with fake-quantised weight (per channel) and input (per tensor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quant_input(x), quantize_weight(self.weight, self.w_bits), self.bias)


class FakeQuantLinear(_FakeQuantMixin, nn.Linear):
    """Linear with fake-quantised weight (per output feature) and input (per tensor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quant_input(x), quantize_weight(self.weight, self.w_bits), self.bias)


def _convert(module: nn.Module, w_bits: int, a_bits: int, qat: bool) -> nn.Module:
    """A fake-quant copy of a Conv2d/Linear that shares its parameters (same names, same shapes)."""
    # built on the meta device (no allocation, no init), then given the original parameters
    kw = {"bias": module.bias is not None, "device": "meta", "dtype": module.weight.dtype}
    if isinstance(module, nn.Conv2d):
        new: nn.Module = FakeQuantConv2d(
            module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
            module.dilation, module.groups, padding_mode=module.padding_mode, **kw,
        )
    else:
        new = FakeQuantLinear(module.in_features, module.out_features, **kw)
    new.weight = module.weight
    new.bias = module.bias
    new.train(module.training)
    new._init_quant(w_bits, a_bits, qat)  # type: ignore[attr-defined]
    return new


def apply_fake_quant(model: nn.Module, w_bits: int, a_bits: int, qat: bool = False) -> nn.Module:
    """Replace every Conv2d/Linear of `model` (in place) by a fake-quantised one; returns `model`.

    `qat=True` keeps parameter gradients (straight-through estimator) and lets activation ranges follow
    the data in training mode; `qat=False` freezes the parameters (evaluation only). 32/32 is a no-op.
    Call `calibrate` with a few batches afterwards to set activation ranges.
    """
    _check_bits("w_bits", w_bits)
    _check_bits("a_bits", a_bits)
    if getattr(model, FAKE_QUANT_ATTR, None):
        raise CompressionError(f"fake quantisation: model is already fake-quantised ({model.ec_fake_quant})")
    if w_bits >= 32 and a_bits >= 32:
        return model
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) in (nn.Conv2d, nn.Linear)
    ]
    if not targets:
        raise CompressionError(f"fake quantisation: {type(model).__name__} has no Conv2d or Linear layer")
    for parent, name, child in targets:
        setattr(parent, name, _convert(child, w_bits, a_bits, qat))
    if not qat:
        for p in model.parameters():
            p.requires_grad_(False)
    setattr(model, FAKE_QUANT_ATTR, {"w_bits": w_bits, "a_bits": a_bits, "qat": qat})
    return model


def _register_op_counter() -> None:
    """Let Torch-Pruning's MAC counter (exact-type lookup) count the fake-quant layers."""
    try:
        from torch_pruning.utils import op_counter
    except ImportError:  # pragma: no cover - torch-pruning is a dependency
        return
    op_counter.MODULES_MAPPING.setdefault(FakeQuantConv2d, op_counter.conv_flops_counter_hook)
    op_counter.MODULES_MAPPING.setdefault(FakeQuantLinear, op_counter.linear_flops_counter_hook)


_register_op_counter()


def fake_quant_layers(model: nn.Module) -> list[_FakeQuantMixin]:
    return [m for m in model.modules() if isinstance(m, _FakeQuantMixin)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]]) -> int:
    """Reset activation ranges to the min/max seen on `batches` (x or (x, y), moved to the model's device).

    Returns the number of batches used.
    """
    layers = fake_quant_layers(model)
    was_training = model.training
    model.eval()
    for layer in layers:
        layer._set_known(False)
        layer.observing = True
    device = next(model.parameters()).device
    n = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
            n += 1
    finally:
        for layer in layers:
            layer.observing = False
        model.train(was_training)
    if n == 0:
        raise CompressionError("fake quantisation: calibrate() got no batches")
    return n
