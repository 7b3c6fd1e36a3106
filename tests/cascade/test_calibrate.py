"""In-cascade stage costs: re-pricing rules, the plan-measure-replan loop, and the fused graph timed on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from edgecompress.cascade.pipeline.calibrate import MIN_CALLS, FusedPathTimer, PathCosts, refine_plan, repriced
from edgecompress.cascade.pipeline.study_candidates import Candidate, plan_cascade, study_candidates
from edgecompress.cascade.planning.builder import seed_rule_plan
from edgecompress.cascade.planning.plan import CascadePlan, StagePlan, StageSpec, simulate
from edgecompress.evaluators.data import load_data
from edgecompress.spaces import parse_experiment


def _cands(n: int = 2000, seed: int = 0) -> tuple[list[Candidate], np.ndarray]:
    """A (1 ms): right and sure on 75% of the samples, unsure (and right half the time) on the rest;
    B (3 ms): right on 99%. A cascade A -> B sends about a quarter to B."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    sure = rng.random(n) < 0.75
    a = rng.normal(0, 0.1, (n, 10)).astype(np.float32)
    a_right = sure | (rng.random(n) < 0.5)
    a_top = np.where(a_right, labels, (labels + 1) % 10)
    a[np.arange(n), a_top] += np.where(sure, 8.0, 0.3)
    b = rng.normal(0, 0.1, (n, 10)).astype(np.float32)
    b_top = np.where(rng.random(n) < 0.99, labels, (labels + 2) % 10)
    b[np.arange(n), b_top] += 8.0
    out = []
    for k, (name, ms, z) in enumerate((("A", 1.0, a), ("B", 3.0, b))):
        acc = float((z.argmax(1) == labels).mean())
        out.append(Candidate(k, StageSpec(name, ms, 28, z), Path("."), acc, "fp32", {}))
    return out, labels


def _plan_fn(cands: list[Candidate], labels: np.ndarray, min_accuracy: float):
    def plan_fn(cs: list[Candidate]) -> CascadePlan:
        return plan_cascade(cs, labels, min_accuracy=min_accuracy, routing_overhead_ms=0.0, call_overhead_ms=0.0,
                            single_from=cands)
    return plan_fn


def _inflating_measure(cands: list[Candidate], labels: np.ndarray, factor: float):
    """Path costs `factor` x the stand-alone sums, with the calls each path gets on validation."""
    ms = {c.spec.name: c.spec.latency_ms for c in cands}
    logits = {c.spec.name: c.spec.val_logits for c in cands}
    seen: list[CascadePlan] = []

    def measure(plan: CascadePlan) -> PathCosts:
        seen.append(plan)
        sim = simulate(plan, {n: logits[n] for n in plan.names}, labels)
        reach = [1.0, *sim.escalation_rates]
        calls = [round(len(labels) * (reach[k] - (reach[k + 1] if k + 1 < len(reach) else 0.0)))
                 for k in range(len(plan.names))]
        cum = np.cumsum([ms[n] for n in plan.names])
        return PathCosts(plan.names, [float(factor * c) for c in cum], calls)

    return measure, seen


def test_repriced_takes_in_cascade_increments_and_keeps_what_it_cannot_measure() -> None:
    cands, _ = _cands()
    plan = CascadePlan(stages=[StagePlan("A", 28, 1.0), StagePlan("B", 28, 3.0)], thresholds=[0.5],
                       call_overhead_ms=0.1, routing_overhead_ms=0.05)
    out, changed = repriced(cands, plan, PathCosts(["A", "B"], [1.5, 5.0], [700, 300]))
    assert changed == ["A", "B"]
    assert out[0].spec.latency_ms == pytest.approx(1.5 - 0.1)  # exit 0 minus the call overhead
    assert out[1].spec.latency_ms == pytest.approx(5.0 - 1.5 - 0.05)  # increment minus routing
    assert cands[0].spec.latency_ms == 1.0  # the inputs are not modified
    # too few calls on a path, or an in-cascade cost below the stand-alone one: the stand-alone latency stays
    out, changed = repriced(cands, plan, PathCosts(["A", "B"], [1.5, 5.0], [990, MIN_CALLS - 1]))
    assert changed == ["A"] and out[1].spec.latency_ms == 3.0
    out, changed = repriced(cands, plan, PathCosts(["A", "B"], [0.5, 2.0], [700, 300]))
    assert changed == [] and [c.spec.latency_ms for c in out] == [1.0, 3.0]


def test_refine_prices_the_plan_at_its_measured_cost() -> None:
    cands, labels = _cands()
    plan_fn = _plan_fn(cands, labels, min_accuracy=0.98)
    first = plan_fn(cands)
    assert first.names == ["A", "B"]  # stand-alone: about 1 + 0.3 x 3 ms < 3 ms
    measure, seen = _inflating_measure(cands, labels, 1.2)
    plan, ref = refine_plan(plan_fn, cands, measure)
    assert plan.names == ["A", "B"] and len(seen) == 1 and ref.rounds[0]["repriced"] == ["A", "B"]
    # the refined prediction is what the measured paths cost at the validation escalation rate
    r = plan.escalation_rates[0]
    assert plan.predicted_latency_ms == pytest.approx(1.2 * (1.0 + r * 3.0), rel=1e-6)
    assert plan.predicted_latency_ms > first.predicted_latency_ms


def test_refine_gives_way_to_the_single_model_at_its_stand_alone_latency() -> None:
    """Inside the cascade everything costs 3x: the cascade (> 3 ms) loses to B alone, which keeps its 3 ms."""
    cands, labels = _cands()
    plan_fn = _plan_fn(cands, labels, min_accuracy=0.98)
    measure, _ = _inflating_measure(cands, labels, 3.0)
    plan, ref = refine_plan(plan_fn, cands, measure)
    assert plan.names == ["B"] and plan.predicted_latency_ms == pytest.approx(3.0)
    assert ref.rounds and ref.rounds[0]["next_stages"] == ["B"]


def test_refine_rejects_a_batch_plan() -> None:
    cands, labels = _cands()

    def plan_fn(cs: list[Candidate]) -> CascadePlan:
        return plan_cascade(cs, labels, min_accuracy=0.98, batch=True, routing_overhead_ms=0.0, single_from=cands)

    with pytest.raises(ValueError, match="batch"):
        refine_plan(plan_fn, cands, lambda p: None)


def test_fused_path_timer_routes_real_images_as_the_plan_does(tiny_study: dict, tmp_path: Path) -> None:
    """The fused graph timed on validation images: every call counted once, and the exit paths split the images
    as the plan's simulation on the stored validation logits does (same deployed forms)."""
    study = optuna.load_study(study_name=tiny_study["name"], storage=tiny_study["storage"])
    cands, labels, _ = study_candidates(study)
    exp = parse_experiment(study.user_attrs["experiment"])
    data = load_data(exp.dataset, exp.seed)
    best = max(cands, key=lambda c: c.val_accuracy)
    plan = seed_rule_plan(cands[0].spec, best.spec, threshold=0.3, labels=labels)
    timer = FusedPathTimer(cands, exp, data, tmp_path, n=len(labels))
    costs = timer(plan)
    assert costs is not None and sum(costs.calls) == len(labels) == len(timer.inputs)
    sim = simulate(plan, {c.spec.name: c.spec.val_logits for c in cands}, labels)
    assert costs.calls[1] / len(labels) == pytest.approx(sim.escalation_rates[0], abs=0.05)
    assert all(m > 0 for m, n in zip(costs.mean_ms, costs.calls) if n)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({cands[0].spec.name, best.spec.name})
