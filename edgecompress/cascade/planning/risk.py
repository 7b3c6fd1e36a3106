"""Cascade thresholds with a guarantee (Learn-then-Test, Angelopoulos et al. 2021).

Loss of an input: 1 when the cascade is wrong and the last stage alone is right (what escalating
everything would have fixed). Goal: with probability >= 1 - delta over the calibration data, the
expected loss on new inputs from the same distribution is <= epsilon.

Procedure (any number of stages):
  1. Candidate thresholds: a grid of per-stage escalation quantiles, built on the SELECTION split (the
     part of validation that also chose the stages); every grid point includes "escalate everything".
  2. On the selection split only, keep the grid's (risk, expected latency) Pareto front and order it from
     the lowest risk (escalate everything, loss 0) to the cheapest. The order is fixed before the
     calibration split is looked at.
  3. On the CALIBRATION split (n inputs, disjoint), each hypothesis H_j: "risk(lambda_j) > epsilon" gets
     the binomial tail p-value P(Binomial(n, epsilon) <= n * empirical risk_j); fixed-sequence testing
     rejects H_1, H_2, ... while p_j <= delta and stops at the first p_j > delta.
  4. The last rejected lambda_j is returned. Fixed-sequence testing controls the family-wise error at
     delta, so P(risk(returned) > epsilon) <= delta; when H_1 is not rejected (n too small) it raises.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgecompress.cascade.planning.plan import route
from edgecompress.errors import ConfigError, EdgeCompressError

__all__ = ["RiskControl", "binomial_pvalue", "cascade_loss", "check_risk", "control_risk", "fixed_sequence",
           "min_calibration_size", "plan_with_risk", "split_indices"]


def check_risk(epsilon: float, delta: float) -> None:
    """ConfigError unless 0 < epsilon < 1 and 0 < delta < 1."""
    for name, v in (("risk (epsilon)", epsilon), ("delta", delta)):
        if not (isinstance(v, (int, float)) and 0 < v < 1):
            raise ConfigError(f"{name} must be in (0, 1), got {v!r}")


def binomial_pvalue(losses: int, n: int, epsilon: float) -> float:
    """P(Binomial(n, epsilon) <= losses): the p-value of H: risk > epsilon given `losses` of n (exact tail)."""
    from scipy.stats import binom

    return float(binom.cdf(int(losses), int(n), float(epsilon)))


def min_calibration_size(epsilon: float, delta: float) -> int:
    """Smallest n for which even zero losses reject H: risk > epsilon at level delta ((1-eps)^n <= delta)."""
    return int(math.ceil(math.log(delta) / math.log1p(-epsilon)))


def fixed_sequence(pvalues: Sequence[float], delta: float) -> int:
    """How many hypotheses fixed-sequence testing rejects: the length of the leading run with p <= delta."""
    k = 0
    for p in pvalues:
        if p > delta:
            break
        k += 1
    return k


def cascade_loss(exit_stage: np.ndarray, exit_correct: np.ndarray, last_correct: np.ndarray) -> np.ndarray:
    """Per-sample loss: 1 when the sample's exit is wrong and the last stage alone would be right.

    `exit_correct` (m, N): is a sample right if it exits at stage k; `last_correct` (N,): the last model alone."""
    wrong = ~exit_correct[exit_stage, np.arange(len(exit_stage))]
    return (wrong & last_correct).astype(np.int64)


def split_indices(n: int, calib_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(selection, calibration) indices of n validation samples: a seeded random split, both sorted."""
    if not 0 < calib_fraction < 1:
        raise ConfigError(f"calibration fraction must be in (0, 1), got {calib_fraction!r}")
    perm = np.random.default_rng(seed).permutation(n)
    n_cal = int(round(n * calib_fraction))
    if n_cal < 1 or n_cal >= n:
        raise EdgeCompressError(f"cannot split {n} validation samples into selection and calibration parts")
    return np.sort(perm[n_cal:]), np.sort(perm[:n_cal])


@dataclass
class RiskControl:
    """What was guaranteed, on which data, with which thresholds."""

    epsilon: float
    delta: float
    thresholds: list[float]
    n_select: int
    n_calib: int
    calib_risk: float
    calib_escalation: list[float]  # fraction of calibration inputs escalated past stage k
    p_value: float
    rejected: int  # hypotheses rejected by fixed-sequence testing (1-based position of the answer)
    path_length: int
    split: str
    statement: str = ""
    procedure: str = field(default="Learn-then-Test: binomial tail p-values, fixed-sequence testing from "
                                    "escalate-everything along the selection split's (risk, latency) front")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["thresholds"] = [t if math.isfinite(t) else ("inf" if t > 0 else "-inf") for t in self.thresholds]
        return d


def _grid(select_confs: Sequence[np.ndarray], levels: int | None) -> list[tuple[float, ...]]:
    """Per-stage thresholds at escalation quantiles q = 0, 1/L, ..., 1 of the selection confidences
    (q = 1: +inf, everything escalates; q = 0: -inf, nothing does), all combinations."""
    m1 = len(select_confs)
    if levels is None:
        levels = {1: 400, 2: 40, 3: 14}.get(m1, 8)
    per: list[list[float]] = []
    for c in select_confs:
        qs = np.linspace(0.0, 1.0, levels + 1)[1:-1]
        t = np.unique(np.quantile(np.asarray(c, dtype=np.float64), qs).astype(np.float32).astype(np.float64))
        per.append([-math.inf, *t.tolist(), math.inf])
    return list(itertools.product(*per))


def _risks(confs: Sequence[np.ndarray], lows: Sequence[float], exit_correct: np.ndarray, last_correct: np.ndarray,
           path: Sequence[tuple[float, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """(loss counts, escalation fractions (P, m-1)) of each threshold vector on one split."""
    n = len(last_correct)
    losses = np.empty(len(path), dtype=np.int64)
    esc = np.empty((len(path), len(confs)))
    for j, thr in enumerate(path):
        ex = route(confs, thr, lows, n=n)
        losses[j] = int(cascade_loss(ex, exit_correct, last_correct).sum())
        esc[j] = [float(np.mean(ex > k)) for k in range(len(confs))]
    return losses, esc


def control_risk(select: tuple[Sequence[np.ndarray], np.ndarray, np.ndarray],
                 calib: tuple[Sequence[np.ndarray], np.ndarray, np.ndarray], epsilon: float, delta: float, *,
                 cost: Callable[[np.ndarray], np.ndarray] | None = None, lows: Sequence[float] | None = None,
                 levels: int | None = None, split: str = "validation") -> RiskControl:
    """Thresholds with P(risk > epsilon) <= delta (module docstring). `select` / `calib`: (confidences of
    stages 0..m-2 per sample, exit_correct (m, N), last_correct (N,)) on the two disjoint splits.
    `cost(escalation fractions (P, m-1)) -> expected latency (P,)` orders the path (default: total
    escalation). Raises EdgeCompressError when the calibration split is too small for any guarantee."""
    check_risk(epsilon, delta)
    s_conf, s_exit, s_last = select
    c_conf, c_exit, c_last = calib
    m1 = len(s_conf)
    lows = [-math.inf] * m1 if lows is None else list(lows)
    n_cal = len(c_last)
    need = min_calibration_size(epsilon, delta)
    if n_cal < need:
        raise EdgeCompressError(f"a guarantee of risk <= {epsilon:g} at delta {delta:g} needs at least {need} "
                                f"calibration samples; the calibration split has {n_cal}")
    grid = _grid(s_conf, levels)
    s_loss, s_esc = _risks(s_conf, lows, s_exit, s_last, grid)
    s_cost = cost(s_esc) if cost is not None else s_esc.sum(axis=1)
    # the selection split's (risk, cost) front, from the lowest risk (and highest cost) down
    order = np.lexsort((-s_cost, s_loss))
    path_idx: list[int] = []
    best_cost = math.inf
    for i in order:
        if s_cost[i] < best_cost - 1e-12:
            path_idx.append(int(i))
            best_cost = float(s_cost[i])
    path = [grid[i] for i in path_idx]
    all_escalate = tuple([math.inf] * m1)
    if path[0] != all_escalate:  # zero risk always: make sure the most conservative point leads
        path.insert(0, all_escalate)
    c_loss, c_esc = _risks(c_conf, lows, c_exit, c_last, path)
    pvals = [binomial_pvalue(k, n_cal, epsilon) for k in c_loss]
    k = fixed_sequence(pvals, delta)
    if k == 0:  # cannot happen with n >= need (escalate-everything has zero loss), kept for safety
        raise EdgeCompressError(f"no threshold passes the test at delta {delta:g} with {n_cal} calibration samples")
    j = k - 1
    thr = [float(t) for t in path[j]]
    stmt = (f"with probability >= {1 - delta:.3g} over the {n_cal}-sample calibration part of the {split} split, "
            f"the expected fraction of inputs the cascade gets wrong while its last stage alone is right is "
            f"<= {epsilon:g} (Learn-then-Test, fixed-sequence; stages and the candidate order came from the "
            f"other {len(s_last)} {split} samples; inputs assumed exchangeable with those)")
    return RiskControl(epsilon=float(epsilon), delta=float(delta), thresholds=thr, n_select=len(s_last),
                       n_calib=n_cal, calib_risk=float(c_loss[j] / n_cal), calib_escalation=c_esc[j].tolist(),
                       p_value=float(pvals[j]), rejected=k, path_length=len(path), split=split, statement=stmt)


def _split_data(plan: Any, logits: Sequence[np.ndarray], labels: np.ndarray
                ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(confidences of stages 0..m-2, exit_correct (m, N), last-stage correct (N,)) of a plan's stages. "The last
    stage alone" is the output of an input that goes through every stage: the last model's logits, or with a
    logit combination (sum, seed_alpha) the combined output there, so escalating everything has zero loss."""
    from edgecompress.cascade.planning.confidence import confidence
    from edgecompress.cascade.planning.plan import running_outputs

    labels = np.asarray(labels, dtype=np.int64)
    confs = [confidence(np.asarray(z, np.float32), plan.kind, t)
             for z, t in zip(logits[:-1], plan.temperatures[:-1], strict=True)]
    outs = running_outputs(logits, plan.combine, plan.alpha)
    exit_correct = np.stack([o.argmax(axis=1) == labels for o in outs])
    return confs, exit_correct, exit_correct[-1].copy()


def plan_with_risk(plan: Any, select: tuple[Sequence[np.ndarray], np.ndarray],
                   calib: tuple[Sequence[np.ndarray], np.ndarray], epsilon: float, delta: float, *,
                   levels: int | None = None, split: str = "validation") -> tuple[Any, RiskControl]:
    """`plan` (stages, confidence, combine kept) with thresholds from `control_risk`; `select` / `calib`:
    (per-stage logits in plan order, labels) of the selection and calibration parts. The path is ordered by
    the plan's expected latency on the selection part; the returned plan's predictions are the
    calibration part's."""
    from edgecompress.cascade.planning.plan import CascadePlan, expected_latency, simulate

    if len(plan.stages) < 2:
        raise EdgeCompressError("risk control needs a cascade of 2+ stages; the plan has one model")
    sel, cal = _split_data(plan, *select), _split_data(plan, *calib)

    def cost(esc: np.ndarray) -> np.ndarray:
        reach = np.concatenate([np.ones((len(esc), 1)), esc], axis=1)
        return expected_latency(plan.stages, reach, plan.batch, plan.routing_overhead_ms, plan.call_overhead_ms)

    rc = control_risk(sel, cal, epsilon, delta, cost=cost, lows=plan.lows, levels=levels, split=split)
    d = plan.to_dict()
    d.pop("version", None)
    d.update(thresholds=rc.thresholds, constraint={"risk": float(epsilon), "delta": float(delta)})
    new = CascadePlan.from_dict(d)
    sim = simulate(new, list(calib[0]), calib[1])
    new.predicted_accuracy, new.predicted_latency_ms = sim.accuracy, sim.expected_latency_ms
    new.escalation_rates = sim.escalation_rates
    return new, rc
