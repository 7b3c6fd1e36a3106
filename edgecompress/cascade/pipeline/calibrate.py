"""In-cascade stage costs: the fused graph timed per exit path on validation inputs, fed back to the planner.

A stage costs more inside the fused graph than timed alone. Measured on bench/cascade.py --heavy (batch 1,
1 thread): calls leaving at stage 0 took 17% longer than stage 0 alone, calls reaching the last stage 13% longer
than the sum of the stages alone (likely causes, not separated: caches shared with the other stages, routing on
real stage sizes), so a plan priced with stand-alone latencies predicted 12% too little. Rather than model the
causes, `refine_plan` plans, times the plan's fused graph on validation inputs (batch 1: each call's exit stage
is known), re-prices the plan's stages at their in-cascade cost and plans again, until the stages repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.cascade.pipeline.study_candidates import Candidate
from edgecompress.cascade.planning.plan import CascadePlan
from edgecompress.runtime.timing import TimingOptions, time_each

__all__ = ["FusedPathTimer", "PathCosts", "Refinement", "path_costs", "refine_plan", "repriced"]

MIN_CALLS = 20  # fewer calls on a path than this: keep that stage's stand-alone latency


@dataclass
class PathCosts:
    """Mean ms per batch-1 call of a fused cascade by exit stage, and how many calls took each path."""

    stages: list[str]
    mean_ms: list[float]
    calls: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"stages": list(self.stages), "mean_ms": list(self.mean_ms), "calls": list(self.calls)}


def path_costs(run: Callable[[np.ndarray], np.ndarray], inputs: Sequence[np.ndarray], stages: Sequence[str],
               warmup: int = 30) -> PathCosts:
    """Time `run` (one input of batch 1 -> its exit stage, int array of shape (1,)) on every input in turn.
    Means are nan for a path no call took."""
    t, outs = time_each(run, inputs, TimingOptions(warmup=warmup))  # the timing engine, under the compute lock
    ex = np.asarray([int(np.asarray(e).reshape(-1)[0]) for e in outs])
    means = [float(t[ex == k].mean()) if (ex == k).any() else float("nan") for k in range(len(stages))]
    return PathCosts(list(stages), means, [int((ex == k).sum()) for k in range(len(stages))])


def repriced(cands: Sequence[Candidate], plan: CascadePlan, costs: PathCosts) -> tuple[list[Candidate], list[str]]:
    """The candidates with the plan's stages at their in-cascade cost, and which were re-priced.

    Stage 0 costs cost(exit 0) - the call overhead; stage k >= 1 costs cost(exit k) - cost(exit k-1) - the
    routing overhead (the planner adds both overheads back). A stage whose path or previous path has fewer
    than MIN_CALLS calls, or whose in-cascade cost comes out below its stand-alone latency, keeps the latter
    (a cascade is never priced cheaper than its parts measured alone)."""
    new_ms: dict[str, float] = {}
    for k, name in enumerate(plan.names):
        if costs.calls[k] < MIN_CALLS or (k and costs.calls[k - 1] < MIN_CALLS):
            continue
        ms = costs.mean_ms[k] - (costs.mean_ms[k - 1] + plan.routing_overhead_ms if k else plan.call_overhead_ms)
        if ms > plan.stages[k].latency_ms:
            new_ms[name] = ms
    out = [dc_replace(c, spec=dc_replace(c.spec, latency_ms=new_ms[c.spec.name])) if c.spec.name in new_ms else c
           for c in cands]
    return out, sorted(new_ms)


@dataclass
class Refinement:
    """What refine_plan measured and changed, round by round (JSON-able through to_dict)."""

    rounds: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": list(self.rounds)}


def refine_plan(plan_fn: Callable[[list[Candidate]], CascadePlan], cands: list[Candidate],
                measure: Callable[[CascadePlan], PathCosts | None],
                max_rounds: int = 3) -> tuple[CascadePlan, Refinement]:
    """Plan with `plan_fn` (candidates -> plan; it keeps its target and judges the single-model alternative at
    stand-alone latencies: plan_cascade(..., single_from=cands)), time the plan's fused graph with `measure`,
    re-price its stages, and plan again, until the plan's stages repeat or `max_rounds` measurements. Costs
    measured in one round carry over to the next (a stage once measured keeps its in-cascade cost). A batch-1
    plan only: batch plans route whole batches."""
    plan = plan_fn(list(cands))
    if plan.batch:
        raise ValueError("plan_fn must give a batch-1 plan, got one with plan.batch True (refine_plan)")
    priced = list(cands)
    ref = Refinement()
    for _ in range(max_rounds):
        if len(plan.stages) < 2:
            break
        costs = measure(plan)
        if costs is None:
            break
        priced, changed = repriced(priced, plan, costs)
        new = plan_fn(priced)
        ref.rounds.append({"stages": plan.names, "predicted_latency_ms": plan.predicted_latency_ms,
                           "path_costs": costs.to_dict(), "repriced": changed, "next_stages": new.names,
                           "next_predicted_latency_ms": new.predicted_latency_ms})
        same = new.names == plan.names
        plan = new
        if same or not changed:
            break
    return plan, ref


class FusedPathTimer:
    """`measure` for refine_plan: each stage deployed once (as evaluate_cascade serves it) under `workdir`, the
    plan's fused graph timed on `n` validation images at batch 1 under the device lock. None when a stage has no
    ONNX form (a torch-backend study): there is no fused graph to time."""

    def __init__(self, cands: Sequence[Candidate], exp: Any, data: Any, workdir: Path, n: int = 1000) -> None:
        from edgecompress.evaluators.splits import make_loader

        self.by_name = {c.spec.name: c for c in cands}
        self.exp, self.data, self.workdir = exp, data, Path(workdir)
        self.inputs = [x.numpy() for x, _ in make_loader(data.val, data.native_size, 1, limit=n)]
        self._paths: dict[str, str | None] = {}

    def _path(self, name: str) -> str | None:
        if name not in self._paths:
            from edgecompress.cascade.pipeline.study_candidates import stage_modules

            d = stage_modules(self.by_name, [name], self.exp, self.data, spinning=False, workdir=self.workdir)[0]
            self._paths[name] = str(d.path) if str(d.path or "").endswith(".onnx") else None
        return self._paths[name]

    def __call__(self, plan: CascadePlan) -> PathCosts | None:
        from edgecompress.cascade.serving.fused import EXIT, INPUT, fused_cascade_graph, fused_session
        from edgecompress.runtime.latency import latency_lock

        paths = [self._path(n) for n in plan.names]
        if any(p is None for p in paths):
            return None
        d = self.data
        sess = fused_session(fused_cascade_graph(paths, plan, d.in_chans, d.native_size, d.num_classes),
                             self.exp.device.measure_threads)
        with latency_lock():
            return path_costs(lambda x: sess.run([EXIT], {INPUT: x})[0], self.inputs, plan.names)
