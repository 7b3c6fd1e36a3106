"""Accuracy intervals: Wilson for one model, Newcombe's paired interval and McNemar for two on the same images."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompress.study.intervals import paired_difference, wilson_interval


def test_wilson_matches_published_values_and_shrinks_with_n() -> None:
    # Newcombe (1998), Table I: 81/263 -> 0.2553 .. 0.3662 (Wilson score, 95%)
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=5e-4) and high == pytest.approx(0.3662, abs=5e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    w300 = np.diff(wilson_interval(210, 300))[0]
    w3000 = np.diff(wilson_interval(2100, 3000))[0]
    assert w3000 < w300 / 3  # ~ 1/sqrt(n)
    with pytest.raises(ValueError, match="n: must be > 0"):
        wilson_interval(1, 0)


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time() -> None:
    """Coverage by simulation: correlated per-image correctness of two models with known accuracies."""
    rng = np.random.default_rng(1)
    n, reps, hits = 200, 1500, 0
    for _ in range(reps):
        easy = rng.random(n) < 0.8  # images both models tend to get right
        a = np.where(easy, rng.random(n) < 0.97, rng.random(n) < 0.55)
        b = np.where(easy, rng.random(n) < 0.95, rng.random(n) < 0.50)
        true = 0.8 * (0.97 - 0.95) + 0.2 * (0.55 - 0.50)
        d = paired_difference(a, b)
        hits += d.low <= true <= d.high
    assert 0.93 <= hits / reps <= 0.965, hits / reps  # ignoring the pairing (phi = 0) gives 0.976 here


def test_a_real_difference_on_many_images_is_significant_and_noise_on_few_is_not() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(20000) < 0.92
    b = np.where(rng.random(20000) < 0.9, a, rng.random(20000) < 0.80)  # mostly agrees, worse elsewhere
    big = paired_difference(a, b)
    assert big.diff > 0 and big.significant and big.p_value < 1e-6
    same_a, same_b = rng.random(150) < 0.9, rng.random(150) < 0.9  # equally good, independent errors
    small = paired_difference(same_a, same_b)
    assert small.low < 0 < small.high and not small.significant
    with pytest.raises(ValueError, match="one length"):
        paired_difference(a[:3], b[:4])
