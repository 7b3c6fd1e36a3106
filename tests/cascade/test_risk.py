"""Learn-then-Test thresholds meet their bound in a simulation with known error rates, without escalating
everything; the p-value and fixed-sequence pieces match their definitions."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy.stats import binom

from edgecompress.cascade.planning.plan import CascadePlan, StagePlan, route
from edgecompress.cascade.planning.risk import (
    RiskControl,
    binomial_pvalue,
    cascade_loss,
    control_risk,
    fixed_sequence,
    min_calibration_size,
    plan_with_risk,
)
from edgecompress.errors import ConfigError, EdgeCompressError

REPEATS, EPS, DELTA, N_SEL, N_CAL = 100, 0.05, 0.1, 600, 600
#: violations allowed: delta x repeats plus binomial slack, the 99.9% quantile of Binomial(REPEATS, DELTA)
MAX_VIOLATIONS = int(binom.ppf(0.999, REPEATS, DELTA))
MAX_ESCALATION = 0.8


def population(m: int, n: int = 50_000, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """A finite population with known per-stage error rates: stage k's confidence c ~ U(0, 1), right with
    probability 0.55 + 0.45 c (earlier stages weaker: scaled down by 0.03 per stage from the last); the last
    stage is right with probability 0.92, independently. Sampling from it with replacement makes the
    population mean of the loss the true risk."""
    rng = np.random.default_rng(seed)
    confs = [rng.uniform(size=n) for _ in range(m - 1)]
    exit_correct = np.stack([rng.uniform(size=n) < (0.55 + 0.45 * c) - 0.03 * (m - 2 - k)
                             for k, c in enumerate(confs)] + [rng.uniform(size=n) < 0.92])
    return confs, exit_correct, exit_correct[-1].copy()


def true_risk(pop: tuple[list[np.ndarray], np.ndarray, np.ndarray], thr: list[float]) -> tuple[float, float]:
    confs, ec, last = pop
    ex = route(confs, thr, n=len(last))
    return float(cascade_loss(ex, ec, last).mean()), float(np.mean(ex > 0))


def ltt(pop: tuple, idx_sel: np.ndarray, idx_cal: np.ndarray) -> list[float]:
    confs, ec, last = pop
    part = lambda i: ([c[i] for c in confs], ec[:, i], last[i])  # noqa: E731
    return control_risk(part(idx_sel), part(idx_cal), EPS, DELTA, levels=20 if len(confs) > 1 else 100).thresholds


def escalate_all(pop: tuple, idx_sel: np.ndarray, idx_cal: np.ndarray) -> list[float]:
    return [math.inf] * len(pop[0])


def run_simulation(m: int, choose: Callable[..., list[float]]) -> tuple[int, float]:
    """(violations of the bound over REPEATS draws, mean escalation past stage 0), asserting the test's
    conditions: violations <= MAX_VIOLATIONS and escalation clearly below 100% (<= MAX_ESCALATION)."""
    pop = population(m)
    rng = np.random.default_rng(1)
    violations, escalation = 0, []
    for _ in range(REPEATS):
        idx = rng.integers(0, len(pop[2]), size=N_SEL + N_CAL)
        thr = choose(pop, idx[:N_SEL], idx[N_SEL:])
        risk, esc = true_risk(pop, thr)
        violations += risk > EPS
        escalation.append(esc)
    mean_esc = float(np.mean(escalation))
    assert violations <= MAX_VIOLATIONS, f"{violations} of {REPEATS} draws broke risk <= {EPS}"
    assert mean_esc <= MAX_ESCALATION, f"escalates {mean_esc:.0%} of inputs: no better than the last stage alone"
    return violations, mean_esc


@pytest.mark.parametrize("m", [2, 3])
def test_ltt_meets_bound_without_escalating_everything(m: int) -> None:
    violations, esc = run_simulation(m, ltt)
    print(f"m={m}: {violations} violations of {REPEATS} (allowed {MAX_VIOLATIONS}), escalation {esc:.1%}")
    assert esc < 0.75  # the bound is met with real savings (about half the inputs stop at stage 0 here)


def test_escalate_everything_fails_the_simulation() -> None:
    with pytest.raises(AssertionError, match="escalates 100%"):
        run_simulation(2, escalate_all)


def test_binomial_pvalue_and_fixed_sequence() -> None:
    assert binomial_pvalue(0, 100, 0.05) == pytest.approx(0.95**100)
    assert binomial_pvalue(5, 100, 0.05) == pytest.approx(binom.cdf(5, 100, 0.05))
    assert fixed_sequence([0.01, 0.05, 0.2, 0.01], 0.1) == 2  # stops at the first failure
    assert fixed_sequence([0.5], 0.1) == 0
    assert min_calibration_size(0.05, 0.1) == 45  # 0.95^45 = 0.0994 <= 0.1 < 0.95^44


def test_too_few_calibration_samples_and_bad_options_raise() -> None:
    confs, ec, last = population(2, n=100)
    part = ([confs[0][:20]], ec[:, :20], last[:20])
    with pytest.raises(EdgeCompressError, match="needs at least 45 calibration samples"):
        control_risk(part, part, 0.05, 0.1)
    with pytest.raises(ConfigError, match="delta"):
        control_risk(part, part, 0.05, 1.5)


def test_plan_with_risk_replaces_thresholds_and_states_the_guarantee() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    labels = rng.integers(0, 10, n)
    big = np.eye(10, dtype=np.float32)[labels] * 6 + rng.standard_normal((n, 10)).astype(np.float32)
    small = np.eye(10, dtype=np.float32)[labels] * 2.5 + rng.standard_normal((n, 10)).astype(np.float32)
    plan = CascadePlan(stages=[StagePlan("s", 14, 0.1), StagePlan("b", 28, 0.4)], thresholds=[0.3])
    new, rc = plan_with_risk(plan, ([small[:1000], big[:1000]], labels[:1000]),
                             ([small[1000:], big[1000:]], labels[1000:]), 0.02, 0.1)
    assert isinstance(rc, RiskControl) and rc.n_select == 1000 and rc.n_calib == 1000
    assert new.thresholds == rc.thresholds and new.constraint == {"risk": 0.02, "delta": 0.1}
    assert rc.calib_risk <= 0.02 and 0 < rc.calib_escalation[0] < 1
    assert "1000-sample calibration part" in rc.statement and "<= 0.02" in rc.statement
    assert rc.to_dict()["thresholds"][0] != "inf"


def test_combined_outputs_keep_escalate_everything_at_zero_loss() -> None:
    """With out1 + 1.6 out2 the reference is the combined all-stages output, so the most conservative candidate
    has zero calibration loss and a guarantee is always reachable with enough samples."""
    rng = np.random.default_rng(1)
    n = 600
    labels = rng.integers(0, 10, n)
    z = [np.eye(10, dtype=np.float32)[labels] * s + rng.standard_normal((n, 10)).astype(np.float32) * 2
         for s in (1.0, 2.0)]
    plan = CascadePlan(stages=[StagePlan("s", 14, 0.1), StagePlan("b", 28, 0.4)], thresholds=[0.3], lows=[0.0],
                       combine="seed_alpha")
    new, rc = plan_with_risk(plan, ([x[:300] for x in z], labels[:300]), ([x[300:] for x in z], labels[300:]),
                             0.01, 0.05)
    assert rc.rejected >= 1 and rc.calib_risk <= 0.01 and new.lows == [0.0]
