"""Confidence scores of classifier logits (higher = more confident) and temperature calibration.

One torch implementation serves both the builder (numpy logits, computed on CPU) and the runtime
(tensors on any device), so a threshold chosen on validation routes the runtime's samples the same way.
"""

from __future__ import annotations

import math
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from edgecompress.errors import ConfigError

ConfidenceKind = Literal["margin", "max_softmax", "entropy"]
CONFIDENCE_KINDS: tuple[str, ...] = ("margin", "max_softmax", "entropy")

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def check_kind(kind: str) -> str:
    """Return `kind` if it names a confidence score, else raise ConfigError (a ValueError) listing the
    valid ones."""
    if kind not in CONFIDENCE_KINDS:
        raise ConfigError(f"unknown confidence kind {kind!r}; valid: {', '.join(CONFIDENCE_KINDS)}")
    return kind


def check_temperature(temperature: float) -> float:
    """Return `temperature` as a float if it is finite and > 0, else raise ValueError."""
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def confidence(logits: ArrayT, kind: str = "margin", temperature: float = 1.0) -> ArrayT:
    """Per-sample confidence of N x C logits; numpy in -> numpy out, tensor in -> tensor (same device).

    margin: top-1 minus top-2 softmax probability (the seed's rule); max_softmax: top-1 probability;
    entropy: negative entropy of the softmax (so higher still means more confident). Computed in float32.
    """
    check_kind(kind)
    t = check_temperature(temperature)
    is_numpy = isinstance(logits, np.ndarray)
    z = torch.from_numpy(np.ascontiguousarray(logits)) if is_numpy else logits
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"logits must be N x C with C >= 1, got shape {tuple(z.shape)}")
    z = z.detach().float()
    if t != 1.0:
        z = z / t
    if kind == "entropy":
        logp = F.log_softmax(z, dim=1)
        out = (logp.exp() * logp).sum(dim=1)
    else:
        p = F.softmax(z, dim=1)
        if kind == "max_softmax" or p.shape[1] == 1:
            out = p.max(dim=1).values
        else:
            top2 = p.topk(2, dim=1).values
            out = top2[:, 0] - top2[:, 1]
    return out.numpy() if is_numpy else out  # type: ignore[return-value]


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature), float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(logz - z[np.arange(len(z)), np.asarray(labels, dtype=np.int64)]))


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """Scalar temperature minimising validation NLL (bounded search on log T), per model."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or len(labels) == 0:
        raise ValueError(
            f"logits and labels must be N x C and N (N > 0), got {logits.shape} and {labels.shape} (fit_temperature)"
        )
    lo, hi = bounds
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds!r}")
    res = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=(math.log(lo), math.log(hi)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(res.x))
