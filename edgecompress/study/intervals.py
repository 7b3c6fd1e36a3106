"""Accuracy is a measurement with noise: a 95% interval for one accuracy, and for the difference of two
models scored on the same images (paired).

`wilson_interval` is the Wilson score interval of a binomial proportion (good at small n and near 0/1).
`paired_difference` compares two models' per-image correctness: the difference of accuracies with a
Newcombe score interval for paired proportions (method 10, Newcombe 1998) and McNemar's exact p-value,
so "model A beats B" can be told from noise on small validation splits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import stats

__all__ = ["PairedDifference", "paired_difference", "wilson_interval"]


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence!r}")
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(correct: int | float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) Wilson score interval of `correct` successes out of `n` (an accuracy's interval)."""
    if n <= 0:
        raise ValueError(f"n: must be > 0, got {n!r}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct: must be in [0, {n}], got {correct!r}")
    z = _z(confidence)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class PairedDifference(NamedTuple):
    """Accuracy of A minus accuracy of B on the same n images, its interval and McNemar's exact p-value."""

    diff: float
    low: float
    high: float
    p_value: float
    n: int
    only_a: int  # images A gets right and B wrong
    only_b: int  # images B gets right and A wrong

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.low > 0 or self.high < 0


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, confidence: float = 0.95) -> PairedDifference:
    """A - B accuracy on the same images with Newcombe's paired score interval (method 10)."""
    a = np.asarray(correct_a, dtype=bool).reshape(-1)
    b = np.asarray(correct_b, dtype=bool).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"correct_a/correct_b: need two non-empty arrays of one length, got {a.size} and {b.size}")
    n = int(a.size)
    both, only_a, only_b = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, confidence)
    l2, u2 = wilson_interval(both + only_b, n, confidence)
    # correlation estimate of Newcombe's method 10 (0 when a margin is empty)
    denom = (both + only_a) * (neither + only_b) * (both + only_b) * (neither + only_a)
    phi = (both * neither - only_a * only_b) / math.sqrt(denom) if denom > 0 else 0.0
    d = p1 - p2
    dl2, du1 = (p1 - l1) ** 2, (u1 - p1) ** 2
    du2, dl1 = (u2 - p2) ** 2, (p2 - l2) ** 2
    low = d - math.sqrt(max(0.0, dl2 + du2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    high = d + math.sqrt(max(0.0, du1 + dl1 - 2 * phi * (u1 - p1) * (p2 - l2)))
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    return PairedDifference(float(d), float(max(-1.0, low)), float(min(1.0, high)), p_value, n, only_a, only_b)
