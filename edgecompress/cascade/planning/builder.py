"""Cascade builder: choose stages (2..4 models) and confidence thresholds from validation logits.

Minimises expected latency subject to a minimum validation accuracy, or maximises accuracy under a
latency budget. Two stages are solved exactly over a threshold grid (one sorted sweep per pair);
three and four stages grow the best plans by one model at a time (beam search) and tune each
threshold by exact one-dimensional sweeps in turn (coordinate descent). Candidates are read through
`StageSpec`'s fields only: the builder never sees test data.

This module checks the target and the candidates and turns the search's result into plans; the candidates are
read in candidates.py and the search itself (sweeps, objective, beam search) is solver.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgecompress.cascade.planning.candidates import as_stage_spec
from edgecompress.cascade.planning.confidence import check_kind
from edgecompress.cascade.planning.plan import SEED_ALPHA, CascadePlan, StagePlan, StageSpec, combine_weight, simulate
from edgecompress.cascade.planning.solver import Objective, Problem, State, pair_states, search
from edgecompress.errors import ConfigError, EdgeCompressError


def check_target(min_accuracy: float | None, max_latency: float | None) -> None:
    """ConfigError for a target a cascade cannot have: both given, accuracy outside [0, 1], latency <= 0 ms."""
    if min_accuracy is not None and max_latency is not None:
        raise ConfigError("give at most one of min_accuracy or max_latency")
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise ConfigError(f"min_accuracy must be in [0, 1], got {min_accuracy!r}")
    if max_latency is not None and not max_latency > 0:
        raise ConfigError(f"max_latency must be > 0 ms, got {max_latency!r}")


def _prepare(
    candidates: Sequence[Any],
    labels: np.ndarray,
    kind: str,
    combine: str,
    alpha: float,
    max_stages: int,
    routing_overhead_ms: float,
    **kw: Any,
) -> Problem:
    check_kind(kind)
    combine_weight(combine, alpha)
    if not 2 <= int(max_stages) <= 8:
        raise ConfigError(f"max_stages must be between 2 and 8, got {max_stages!r}")
    if not (math.isfinite(routing_overhead_ms) and routing_overhead_ms >= 0):
        raise ConfigError(f"routing_overhead_ms must be >= 0, got {routing_overhead_ms!r}")
    specs = [as_stage_spec(c) for c in candidates]
    if len(specs) < 2:
        names = ", ".join(s.name for s in specs) or "none"
        raise EdgeCompressError(
            f"cascade needs at least 2 Pareto models; the front has {len(specs)} ({names}): "
            "run more trials or relax the study's constraints"
        )
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"candidates must have unique names, got {names}")
    for s in specs:
        if s.val_logits.ndim != 2 or s.val_logits.shape[0] != len(labels):
            raise ValueError(
                f"candidates: val_logits of {s.name!r} have shape {s.val_logits.shape}, expected ({len(labels)}, C)"
            )
        if not np.isfinite(s.val_logits).all():
            raise ValueError(f"candidates: val_logits of {s.name!r} contain NaN or inf")
        if not (math.isfinite(s.latency_ms) and s.latency_ms > 0):
            raise ValueError(f"candidates: latency_ms of {s.name!r} must be > 0, got {s.latency_ms!r}")
    return Problem(
        specs, labels, kind=kind, combine=combine, alpha=alpha, routing_overhead_ms=routing_overhead_ms, **kw
    )


def _trim(st: State) -> State:
    """Drop stages no input can reach (a -inf threshold stops all escalation after its stage)."""
    for k, t in enumerate(st.thr):
        if t == -math.inf:
            return State(st.ids[: k + 1], st.thr[:k], st.acc, st.lat, st.key)
    return st


def _to_plan(prob: Problem, st: State, constraint: dict[str, float]) -> CascadePlan:
    """Plan of a search state (unreachable stages dropped), with its metrics replayed by `simulate`."""
    st = _trim(st)
    plan = CascadePlan(
        stages=[prob.stage_plans[i] for i in st.ids],
        thresholds=list(st.thr),
        kind=prob.kind,
        temperatures=[prob.temps[i] for i in st.ids],
        combine=prob.combine,
        alpha=prob.alpha,
        routing_overhead_ms=prob.overhead,
        batch=prob.batch,
        call_overhead_ms=prob.call_overhead,
        constraint=constraint,
    )
    sim = simulate(plan, [prob.logits[i] for i in st.ids], prob.labels)
    plan.predicted_accuracy = sim.accuracy
    plan.predicted_latency_ms = sim.expected_latency_ms
    plan.escalation_rates = sim.escalation_rates
    return plan


def build_cascade(
    candidates: Sequence[StageSpec | Any],
    labels: np.ndarray,
    *,
    min_accuracy: float | None = None,
    max_latency: float | None = None,
    kind: str = "margin",
    max_stages: int = 4,
    combine: str = "last",
    alpha: float = SEED_ALPHA,
    calibrate: bool = False,
    routing_overhead_ms: float = 0.0,
    batch: bool = False,
    n_thresholds: int | None = 100,
    beam: int = 2,
    call_overhead_ms: float = 0.0,
) -> CascadePlan:
    """Cheapest cascade with validation accuracy >= min_accuracy, or most accurate under max_latency.

    `candidates`: StageSpec-like records (name, latency_ms, input_size, val_logits, optional
    latency_batch_ms/batch_size) whose logits cover the same validation samples as `labels`.
    `batch=True` plans with the serving-batch latencies; `call_overhead_ms` is paid once per call by any 2+
    stage cascade (the fused graph's resize/confidence/If cost, fused.measure_fused_overheads). Stages no
    input reaches are dropped, so the plan has a single stage when one model alone is the optimum.
    Raises EdgeCompressError when fewer than two candidates are given or no cascade meets the constraint
    (the message names the closest).
    """
    if (min_accuracy is None) == (max_latency is None):
        raise ConfigError("give exactly one of min_accuracy or max_latency")
    check_target(min_accuracy, max_latency)
    if beam < 1:
        raise ConfigError(f"beam must be >= 1, got {beam!r}")
    prob = _prepare(
        candidates,
        labels,
        kind,
        combine,
        alpha,
        max_stages,
        routing_overhead_ms,
        calibrate=calibrate,
        batch=batch,
        n_thresholds=n_thresholds,
        call_overhead_ms=call_overhead_ms,
    )
    obj = Objective(min_accuracy, max_latency)
    best = search(prob, obj, int(max_stages), beam)
    constraint = {"min_accuracy": min_accuracy} if min_accuracy is not None else {"max_latency": max_latency}
    plan = _to_plan(prob, best, {k: float(v) for k, v in constraint.items() if v is not None})
    if best.key[0] > 0:
        unit = "batch" if batch else "input"
        what = (
            f"validation accuracy >= {min_accuracy:.4f}"
            if min_accuracy is not None
            else f"expected latency <= {max_latency:g} ms per {unit}"
        )
        raise EdgeCompressError(
            f"no cascade of the {len(prob.specs)} candidates reaches {what}; closest: "
            f"{' -> '.join(plan.names)} with accuracy {plan.predicted_accuracy:.4f} at "
            f"{plan.predicted_latency_ms:.4g} ms"
        )
    return plan


def cascade_front(
    candidates: Sequence[StageSpec | Any],
    labels: np.ndarray,
    *,
    kind: str = "margin",
    max_stages: int = 2,
    combine: str = "last",
    alpha: float = SEED_ALPHA,
    calibrate: bool = False,
    routing_overhead_ms: float = 0.0,
    batch: bool = False,
    n_thresholds: int | None = 100,
    n_targets: int = 6,
    beam: int = 2,
) -> list[CascadePlan]:
    """Pareto front (expected latency up, accuracy up) of cascades as thresholds sweep.

    Every pair's whole threshold curve, plus, for max_stages > 2, the cheapest 3..max_stages cascade
    at `n_targets` accuracy levels spread over the pair front. Sorted by expected latency.
    """
    prob = _prepare(
        candidates,
        labels,
        kind,
        combine,
        alpha,
        max_stages,
        routing_overhead_ms,
        calibrate=calibrate,
        batch=batch,
        n_thresholds=n_thresholds,
    )
    _, states = pair_states(prob, None)
    front = _plan_front(states)
    if max_stages > 2 and len(prob.specs) > 2:
        accs = np.unique([s.acc for s in front])
        for a in np.quantile(accs, np.linspace(0, 1, n_targets)):
            states.append(search(prob, Objective(float(a), None), int(max_stages), beam))
        front = _plan_front(states)
    return [_to_plan(prob, s, {}) for s in front]


def _plan_front(states: list[State]) -> list[State]:
    """The cascade's own front over plans (expected latency vs accuracy): states no other state beats on
    both latency (lower) and accuracy (higher). Trial fronts are edgecompress.study.front."""
    out: list[State] = []
    for s in sorted(states, key=lambda s: (s.lat, -s.acc, len(s.ids))):
        if not out or s.acc > out[-1].acc + 1e-12:
            out.append(s)
    return out


def seed_rule_plan(
    small: StageSpec | Any,
    large: StageSpec | Any,
    threshold: float = 0.03,
    alpha: float = SEED_ALPHA,
    *,
    low: float = 0.0,
    labels: np.ndarray | None = None,
    routing_overhead_ms: float = 0.0,
    batch: bool = False,
) -> CascadePlan:
    """The seed's fixed rule: escalate when low < margin < threshold; escalated output out1 + alpha*out2.

    With `labels`, the plan's predicted accuracy, latency and escalation rate are filled from the
    candidates' validation logits.
    """
    s, lg = as_stage_spec(small), as_stage_spec(large)
    plan = CascadePlan(
        stages=[
            StagePlan(x.name, x.input_size, x.latency_ms, x.latency_batch_ms, x.batch_size) for x in (s, lg)
        ],
        thresholds=[float(threshold)],
        lows=[float(low)],
        kind="margin",
        combine="seed_alpha",
        alpha=float(alpha),
        routing_overhead_ms=routing_overhead_ms,
        batch=batch,
        constraint={"seed_threshold": float(threshold)},
    )
    if labels is not None:
        sim = simulate(plan, [s.val_logits, lg.val_logits], labels)
        for st, z in zip(plan.stages, (s.val_logits, lg.val_logits), strict=True):
            st.val_accuracy = float(np.mean(z.argmax(axis=1) == np.asarray(labels)))
        plan.predicted_accuracy = sim.accuracy
        plan.predicted_latency_ms = sim.expected_latency_ms
        plan.escalation_rates = sim.escalation_rates
    return plan
