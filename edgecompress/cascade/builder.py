"""Cascade builder: choose stages (2..4 models) and confidence thresholds from validation logits.

Minimises expected latency subject to a minimum validation accuracy, or maximises accuracy under a
latency budget. Two stages are solved exactly over a threshold grid (one sorted sweep per pair);
three and four stages grow the best plans by one model at a time (beam search) and tune each
threshold by exact one-dimensional sweeps in turn (coordinate descent). Candidates are read through
`StageSpec`'s fields only: the builder never sees test data.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.cascade.confidence import check_kind, confidence, fit_temperature
from edgecompress.cascade.plan import (
    SEED_ALPHA,
    CascadePlan,
    StagePlan,
    StageSpec,
    combine_weight,
    expected_latency,
    running_outputs,
    simulate,
)
from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.evaluators.result import ARTEFACT_FILES

_FIELDS = ("name", "latency_ms", "input_size", "val_logits", "latency_batch_ms", "batch_size")
_INF = math.inf


def as_stage_spec(candidate: Any) -> StageSpec:
    """Copy the builder's fields (and only those) from a StageSpec-like object or a mapping."""
    if isinstance(candidate, StageSpec):
        return candidate
    get = candidate.get if isinstance(candidate, Mapping) else (lambda k, d=None: getattr(candidate, k, d))
    missing = [k for k in _FIELDS[:4] if get(k, None) is None]
    if missing:
        raise ValueError(f"cascade candidate {get('name', candidate)!r} lacks {', '.join(missing)}")
    return StageSpec(
        name=str(get("name")),
        latency_ms=float(get("latency_ms")),
        input_size=int(get("input_size")),
        val_logits=np.asarray(get("val_logits"), dtype=np.float32),
        latency_batch_ms=None if get("latency_batch_ms", None) is None else float(get("latency_batch_ms")),
        batch_size=None if get("batch_size", None) is None else int(get("batch_size")),
    )


def stage_spec_from_artefacts(
    trial_dir: str | os.PathLike[str], name: str | None = None
) -> tuple[StageSpec, np.ndarray]:
    """(StageSpec, validation labels) from a trial's artefact folder: metrics.json and val_* files only."""
    trial_dir = Path(trial_dir)
    paths = {k: trial_dir / ARTEFACT_FILES[k] for k in ("metrics", "val_logits", "val_labels")}
    for p in paths.values():
        if not p.is_file():
            raise EdgeCompressError(f"cascade candidate artefact missing: {p}")
    try:
        metrics = json.loads(paths["metrics"].read_text())
        metrics = metrics.get("metrics", metrics)  # the search writes EvalResult.to_dict(): metrics nested
        logits = np.load(paths["val_logits"], allow_pickle=False)
        labels = np.load(paths["val_labels"], allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EdgeCompressError(f"cannot read cascade candidate artefacts in {trial_dir}: {e}") from None
    missing = [k for k in ("latency_ms", "input_size") if metrics.get(k) is None]
    if missing:
        raise EdgeCompressError(f"{paths['metrics']} lacks {', '.join(missing)}")
    spec = StageSpec(
        name=name or trial_dir.name,
        latency_ms=float(metrics["latency_ms"]),
        input_size=int(metrics["pipeline_input_size"] if metrics.get("crop") == "dic" else metrics["input_size"]),
        val_logits=np.asarray(logits, dtype=np.float32),
        latency_batch_ms=None
        if metrics.get("latency_batch_ms") is None
        else float(metrics["latency_batch_ms"]),
        batch_size=None if metrics.get("batch_size") is None else int(metrics["batch_size"]),
    )
    return spec, np.asarray(labels, dtype=np.int64)


def check_target(min_accuracy: float | None, max_latency: float | None) -> None:
    """ConfigError for a target a cascade cannot have: both given, accuracy outside [0, 1], latency <= 0 ms."""
    if min_accuracy is not None and max_latency is not None:
        raise ConfigError("give at most one of min_accuracy or max_latency")
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise ConfigError(f"min_accuracy must be in [0, 1], got {min_accuracy!r}")
    if max_latency is not None and not max_latency > 0:
        raise ConfigError(f"max_latency must be > 0 ms, got {max_latency!r}")


def _threshold_grid(conf: np.ndarray, n_thresholds: int | None) -> np.ndarray:
    """-inf, boundaries between distinct confidences at sample quantiles, +inf (sorted, float32-exact).

    Each boundary t satisfies a < t <= b for neighbouring distinct values a < b, so `conf < t` splits
    the samples the same way in float32 (runtime) and float64.
    """
    u = np.unique(conf)
    if len(u) < 2:
        return np.array([-_INF, _INF])
    if n_thresholds is None or n_thresholds >= len(u) - 1:
        idx = np.arange(1, len(u))
    else:
        cs = np.sort(conf)
        p = np.unique(np.round(np.linspace(0, len(cs) - 1, n_thresholds + 2)[1:-1]).astype(np.int64))
        idx = np.unique(np.searchsorted(u, cs[p]))
        idx = idx[idx > 0]
    a, b = u[idx - 1].astype(np.float64), u[idx].astype(np.float64)
    t = ((a + b) / 2).astype(np.float32)
    t = np.where(t <= u[idx - 1], u[idx], t).astype(np.float64)
    return np.concatenate([[-_INF], t, [_INF]])


@dataclass
class _State:
    ids: tuple[int, ...]
    thr: tuple[float, ...]
    acc: float
    lat: float
    key: tuple[float, float, float]


class _Problem:
    """Validation data of the candidates, sorted by latency, with cached confidences and correctness."""

    def __init__(
        self,
        specs: list[StageSpec],
        labels: np.ndarray,
        *,
        kind: str,
        calibrate: bool,
        combine: str,
        alpha: float,
        routing_overhead_ms: float,
        batch: bool,
        n_thresholds: int | None,
        call_overhead_ms: float = 0.0,
    ) -> None:
        self.kind, self.combine, self.alpha = kind, combine, alpha
        self.overhead, self.batch, self.call_overhead = routing_overhead_ms, batch, call_overhead_ms
        self.labels = labels
        self.n = len(labels)
        self.specs = sorted(specs, key=lambda s: (self._lat(s), s.name))
        self.logits = [s.val_logits for s in self.specs]
        self.temps = [fit_temperature(z, labels) if calibrate else 1.0 for z in self.logits]
        self.conf = [confidence(z, kind, t) for z, t in zip(self.logits, self.temps, strict=True)]
        self.correct = [z.argmax(axis=1) == labels for z in self.logits]
        self.order = [np.argsort(c, kind="stable") for c in self.conf]
        self.grid = [_threshold_grid(c, n_thresholds) for c in self.conf]
        self.stage_plans = [
            StagePlan(s.name, s.input_size, s.latency_ms, s.latency_batch_ms, s.batch_size, float(c.mean()))
            for s, c in zip(self.specs, self.correct, strict=True)
        ]
        self._exit_correct: dict[tuple[int, ...], np.ndarray] = {}

    def _lat(self, s: StageSpec) -> float:
        if self.batch and s.latency_batch_ms is None:
            raise ValueError(f"candidate {s.name!r} has no latency_batch_ms but batch=True")
        return float(s.latency_batch_ms) if self.batch else s.latency_ms

    def exit_correct(self, ids: tuple[int, ...]) -> np.ndarray:
        """(m, N) bool: is a sample right if it exits at stage k of the cascade `ids`."""
        if ids not in self._exit_correct:
            if combine_weight(self.combine, self.alpha) is None:
                e = np.stack([self.correct[i] for i in ids])
            else:
                outs = running_outputs([self.logits[i] for i in ids], self.combine, self.alpha)
                e = np.stack([o.argmax(axis=1) == self.labels for o in outs])
            self._exit_correct[ids] = e
        return self._exit_correct[ids]

    def latency(self, ids: tuple[int, ...], reach: np.ndarray) -> np.ndarray:
        stages = [self.stage_plans[i] for i in ids]
        return expected_latency(stages, reach, self.batch, self.overhead, self.call_overhead)

    def sweep(self, ids: tuple[int, ...], thr: Sequence[float], j: int) -> tuple[np.ndarray, ...]:
        """Accuracy and latency of cascade `ids` for every grid threshold of stage j, others fixed."""
        m, n = len(ids), self.n
        escal = [(self.conf[ids[k]] < thr[k]) for k in range(m - 1)]
        reaches = np.ones(n, dtype=bool)
        exit_stage = np.full(n, m - 1, dtype=np.int64)
        for k in range(j):
            exit_stage[reaches & ~escal[k]] = k
            reaches &= escal[k]
        down = np.full(n, m - 1, dtype=np.int64)  # exit stage if escalated past j
        und = np.ones(n, dtype=bool)
        for k in range(j + 1, m - 1):
            down[und & ~escal[k]] = k
            und &= escal[k]
        e = self.exit_correct(ids)
        cols = np.arange(n)
        if j == 0:
            idx = self.order[ids[0]]
        else:
            sub = np.flatnonzero(reaches)
            idx = sub[np.argsort(self.conf[ids[j]][sub], kind="stable")]
        grid = self.grid[ids[j]]
        p = np.searchsorted(self.conf[ids[j]][idx], grid, side="left")  # escalated = first p of idx
        d_corr = np.concatenate([[0], np.cumsum(e[down[idx], idx])])
        e_corr = np.concatenate([[0], np.cumsum(e[j, idx])])
        before = ~reaches
        correct = e[exit_stage[before], cols[before]].sum() + d_corr[p] + (e_corr[-1] - e_corr[p])
        reach = np.empty((len(grid), m))
        for k in range(j + 1):
            reach[:, k] = (exit_stage >= k).sum() if k < j else len(idx)
        for k in range(j + 1, m):
            reach[:, k] = np.concatenate([[0], np.cumsum(down[idx] >= k)])[p]
        reach /= n
        return correct / n, self.latency(ids, reach), grid


class _Objective:
    """Lexicographic key (violation, objective, tie-break): smaller is better."""

    def __init__(self, min_accuracy: float | None, max_latency: float | None) -> None:
        self.min_accuracy, self.max_latency = min_accuracy, max_latency

    def keys(self, acc: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.min_accuracy is not None:
            v = np.maximum(0.0, self.min_accuracy - acc)
            v[v <= 1e-12] = 0.0
            return v, lat, -acc
        assert self.max_latency is not None
        v = np.maximum(0.0, lat - self.max_latency)
        v[v <= 1e-9 * max(1.0, self.max_latency)] = 0.0
        return v, -acc, lat

    def best(self, acc: np.ndarray, lat: np.ndarray) -> tuple[int, tuple[float, float, float]]:
        v, o, s = self.keys(acc, lat)
        i = int(np.lexsort((s, o, v))[0])
        return i, (float(v[i]), float(o[i]), float(s[i]))


def _coordinate_descent(
    prob: _Problem, obj: _Objective, ids: tuple[int, ...], thr: list[float], max_rounds: int = 4
) -> _State:
    """Tune one threshold at a time by an exact sweep until no threshold changes."""
    state: _State | None = None
    for _ in range(max_rounds):
        changed = False
        for j in range(len(ids) - 1):
            acc, lat, grid = prob.sweep(ids, thr, j)
            cur = int(np.flatnonzero(grid == thr[j])[0])
            i, key = obj.best(acc, lat)
            _, cur_key = obj.best(acc[cur : cur + 1], lat[cur : cur + 1])
            if key < cur_key:
                thr[j], changed, cur, cur_key = float(grid[i]), True, i, key
            state = _State(ids, tuple(thr), float(acc[cur]), float(lat[cur]), cur_key)
        if not changed:
            break
    assert state is not None
    return state


def _pair_states(prob: _Problem, obj: _Objective | None) -> tuple[list[_State], list[_State]]:
    """Best state per pair under `obj` (if any) and every pair's whole threshold curve."""
    best, curve = [], []
    for a in range(len(prob.specs)):
        for b in range(a + 1, len(prob.specs)):
            acc, lat, grid = prob.sweep((a, b), [_INF], 0)
            curve += [
                _State((a, b), (float(t),), float(x), float(y), (0, 0, 0))
                for x, y, t in zip(acc, lat, grid, strict=True)
            ]
            if obj is not None:
                i, key = obj.best(acc, lat)
                best.append(_State((a, b), (float(grid[i]),), float(acc[i]), float(lat[i]), key))
    return best, curve


def _search(prob: _Problem, obj: _Objective, max_stages: int, beam: int) -> _State:
    """Best cascade: exact over pairs, then beam search adding one stage at a time (3..max_stages)."""
    pairs, _ = _pair_states(prob, obj)
    frontier = sorted(pairs, key=lambda s: s.key)[:beam]
    best = frontier[0]
    for _m in range(3, max_stages + 1):
        grown: dict[tuple[Any, ...], _State] = {}
        for st in frontier:
            for c in range(len(prob.specs)):
                if c in st.ids:
                    continue
                ids = tuple(sorted(st.ids + (c,)))
                pos = ids.index(c)
                thr = list(st.thr[:pos]) + [_INF] + list(st.thr[pos:])
                new = _coordinate_descent(prob, obj, ids, thr)
                grown[(new.ids, new.thr)] = new
        if not grown:
            break
        frontier = sorted(grown.values(), key=lambda s: s.key)[:beam]
        if frontier[0].key < best.key:
            best = frontier[0]
    return best


def _prepare(
    candidates: Sequence[Any],
    labels: np.ndarray,
    kind: str,
    combine: str,
    alpha: float,
    max_stages: int,
    routing_overhead_ms: float,
    **kw: Any,
) -> _Problem:
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
        raise ValueError(f"cascade candidate names must be unique, got {names}")
    for s in specs:
        if s.val_logits.ndim != 2 or s.val_logits.shape[0] != len(labels):
            raise ValueError(
                f"val_logits of {s.name!r} have shape {s.val_logits.shape}, expected ({len(labels)}, C)"
            )
        if not np.isfinite(s.val_logits).all():
            raise ValueError(f"val_logits of {s.name!r} contain NaN or inf")
        if not (math.isfinite(s.latency_ms) and s.latency_ms > 0):
            raise ValueError(f"latency_ms of {s.name!r} must be > 0, got {s.latency_ms!r}")
    return _Problem(
        specs, labels, kind=kind, combine=combine, alpha=alpha, routing_overhead_ms=routing_overhead_ms, **kw
    )


def _trim(st: _State) -> _State:
    """Drop stages no input can reach (a -inf threshold stops all escalation after its stage)."""
    for k, t in enumerate(st.thr):
        if t == -_INF:
            return _State(st.ids[: k + 1], st.thr[:k], st.acc, st.lat, st.key)
    return st


def _to_plan(prob: _Problem, st: _State, constraint: dict[str, float]) -> CascadePlan:
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
    obj = _Objective(min_accuracy, max_latency)
    best = _search(prob, obj, int(max_stages), beam)
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
    _, states = _pair_states(prob, None)
    front = _plan_front(states)
    if max_stages > 2 and len(prob.specs) > 2:
        accs = np.unique([s.acc for s in front])
        for a in np.quantile(accs, np.linspace(0, 1, n_targets)):
            states.append(_search(prob, _Objective(float(a), None), int(max_stages), beam))
        front = _plan_front(states)
    return [_to_plan(prob, s, {}) for s in front]


def _plan_front(states: list[_State]) -> list[_State]:
    """The cascade's own front over plans (expected latency vs accuracy): states no other state beats on
    both latency (lower) and accuracy (higher). Trial fronts are edgecompress.study.front."""
    out: list[_State] = []
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
