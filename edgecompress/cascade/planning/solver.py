"""The cascade search over validation data: candidates sorted by latency with cached confidences (`Problem`),
exact one-dimensional threshold sweeps, the objective's lexicographic key, exact search over pairs and beam
search with coordinate descent for three and more stages."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecompress.cascade.planning.confidence import confidence, fit_temperature
from edgecompress.cascade.planning.plan import (
    StagePlan,
    StageSpec,
    combine_weight,
    escalates,
    expected_latency,
    running_outputs,
)
from edgecompress.errors import ConfigError

_INF = math.inf


def threshold_grid(conf: np.ndarray, n_thresholds: int | None) -> np.ndarray:
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
class State:
    ids: tuple[int, ...]
    thr: tuple[float, ...]
    acc: float
    lat: float
    key: tuple[float, float, float]


class Problem:
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
        self.grid = [threshold_grid(c, n_thresholds) for c in self.conf]
        self.stage_plans = [
            StagePlan(s.name, s.input_size, s.latency_ms, s.latency_batch_ms, s.batch_size, float(c.mean()))
            for s, c in zip(self.specs, self.correct, strict=True)
        ]
        self._exit_correct: dict[tuple[int, ...], np.ndarray] = {}

    def _lat(self, s: StageSpec) -> float:
        if self.batch and s.latency_batch_ms is None:
            raise ConfigError(f"candidate {s.name!r} has no latency_batch_ms (batch latency): a batch plan needs it")
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
        escal = [escalates(self.conf[ids[k]], -np.inf, thr[k]) for k in range(m - 1)]  # plan's one rule, no low
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


class Objective:
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


def coordinate_descent(
    prob: Problem, obj: Objective, ids: tuple[int, ...], thr: list[float], max_rounds: int = 4
) -> State:
    """Tune one threshold at a time by an exact sweep until no threshold changes."""
    state: State | None = None
    for _ in range(max_rounds):
        changed = False
        for j in range(len(ids) - 1):
            acc, lat, grid = prob.sweep(ids, thr, j)
            cur = int(np.flatnonzero(grid == thr[j])[0])
            i, key = obj.best(acc, lat)
            _, cur_key = obj.best(acc[cur : cur + 1], lat[cur : cur + 1])
            if key < cur_key:
                thr[j], changed, cur, cur_key = float(grid[i]), True, i, key
            state = State(ids, tuple(thr), float(acc[cur]), float(lat[cur]), cur_key)
        if not changed:
            break
    assert state is not None
    return state


def pair_states(prob: Problem, obj: Objective | None) -> tuple[list[State], list[State]]:
    """Best state per pair under `obj` (if any) and every pair's whole threshold curve."""
    best, curve = [], []
    for a in range(len(prob.specs)):
        for b in range(a + 1, len(prob.specs)):
            acc, lat, grid = prob.sweep((a, b), [_INF], 0)
            curve += [
                State((a, b), (float(t),), float(x), float(y), (0, 0, 0))
                for x, y, t in zip(acc, lat, grid, strict=True)
            ]
            if obj is not None:
                i, key = obj.best(acc, lat)
                best.append(State((a, b), (float(grid[i]),), float(acc[i]), float(lat[i]), key))
    return best, curve


def search(prob: Problem, obj: Objective, max_stages: int, beam: int) -> State:
    """Best cascade: exact over pairs, then beam search adding one stage at a time (3..max_stages)."""
    pairs, _ = pair_states(prob, obj)
    frontier = sorted(pairs, key=lambda s: s.key)[:beam]
    best = frontier[0]
    for _m in range(3, max_stages + 1):
        grown: dict[tuple[Any, ...], State] = {}
        for st in frontier:
            for c in range(len(prob.specs)):
                if c in st.ids:
                    continue
                ids = tuple(sorted(st.ids + (c,)))
                pos = ids.index(c)
                thr = list(st.thr[:pos]) + [_INF] + list(st.thr[pos:])
                new = coordinate_descent(prob, obj, ids, thr)
                grown[(new.ids, new.thr)] = new
        if not grown:
            break
        frontier = sorted(grown.values(), key=lambda s: s.key)[:beam]
        if frontier[0].key < best.key:
            best = frontier[0]
    return best
