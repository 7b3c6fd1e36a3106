"""Hardware-independent cost of a model: MACs, BitOPs, parameters, parameter bytes, serialized size.

MACs count Conv2d and Linear layers only (per image, from one forward pass with hooks): BatchNorm
folds into the preceding convolution at deploy time and activations/pooling are negligible next to
them, so this is the count that tracks what a deployed kernel does. BitOPs = MACs x w_bits x a_bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from edgecompress.spaces.config import ALLOWED_BITS


def _check_bits(name: str, bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ALLOWED_BITS:
        raise ValueError(f"bits must be one of {list(ALLOWED_BITS)}, got {name}={bits!r} (count_costs)")


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates per image of Conv2d and Linear layers for an input of `input_shape`.

    `input_shape` is (C, H, W) or (N, C, H, W); the result is per image whatever N is.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or any(s < 1 for s in shape):
        raise ValueError(
            f"input_shape must be (C, H, W) or (N, C, H, W), got {tuple(input_shape)} (count_macs)"
        )
    total = 0

    def conv_hook(m: nn.Conv2d, inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        per_out = (m.in_channels // m.groups) * kh * kw
        total += out.numel() * per_out  # batch of one

    def linear_hook(m: nn.Linear, inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features  # batch of one

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        param = next(iter(model.parameters()), None)
        dev = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *shape[1:], device=dev, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them, including BatchNorm affine terms and biases)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_costs(
    model: nn.Module, input_shape: Sequence[int], w_bits: int = 32, a_bits: int = 32
) -> dict[str, int]:
    """MACs, params, param_bytes (params x w_bits / 8) and BitOPs (MACs x w_bits x a_bits), per image."""
    _check_bits("w_bits", w_bits)
    _check_bits("a_bits", a_bits)
    macs = count_macs(model, input_shape)
    params = count_params(model)
    return {
        "macs": macs,
        "params": params,
        "param_bytes": int(round(params * w_bits / 8)),
        "bitops": macs * w_bits * a_bits,
    }
