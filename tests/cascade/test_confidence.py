"""Confidence scores on hand-computed logits, numpy/torch agreement, temperature fitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgecompress.cascade import confidence, fit_temperature


def test_scores_match_hand_values() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    z = np.log(p).astype(np.float32)
    np.testing.assert_allclose(confidence(z, "margin"), [0.5, 0.05], atol=1e-6)
    np.testing.assert_allclose(confidence(z, "max_softmax"), [0.7, 0.4], atol=1e-6)
    neg_entropy = (p * np.log(p)).sum(axis=1)
    np.testing.assert_allclose(confidence(z, "entropy"), neg_entropy, atol=1e-6)
    assert confidence(z, "entropy")[0] > confidence(z, "entropy")[1]  # peakier = more confident


def test_temperature_flattens_and_numpy_equals_torch() -> None:
    z = np.random.default_rng(0).normal(0, 3, (50, 10)).astype(np.float32)
    for kind in ("margin", "max_softmax", "entropy"):
        a = confidence(z, kind, temperature=2.0)
        b = confidence(torch.from_numpy(z), kind, temperature=2.0)
        assert isinstance(b, torch.Tensor)
        np.testing.assert_array_equal(a, b.numpy())
        assert np.all(confidence(z, kind, 4.0) <= confidence(z, kind, 1.0) + 1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_temperature_and_kind_raise(bad: float) -> None:
    z = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="temperature"):
        confidence(z, "margin", bad)
    with pytest.raises(ValueError, match="unknown confidence kind 'nope'"):
        confidence(z, "nope")


def test_fit_temperature_recovers_the_generating_temperature() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 4, (4000, 10))
    p = np.exp(z / 2.5)
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(10, p=row) for row in p])
    t = fit_temperature(z.astype(np.float32), labels)
    assert abs(t - 2.5) < 0.25
