"""Cascade builder: known optima on synthetic logits, exact accounting, test-data isolation, errors."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import yaml

from edgecompress.cascade import (
    CascadePlan,
    StagePlan,
    StageSpec,
    build_cascade,
    cascade_front,
    seed_rule_plan,
    simulate,
    stage_spec_from_artefacts,
)
from edgecompress.cascade.planning.builder import _prepare
from edgecompress.errors import EdgeCompressError


def _two_class_logits(labels: np.ndarray, right: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """2-class logits whose softmax margin is `margin` and whose argmax is right/wrong as asked."""
    p_top = (1 + margin) / 2
    top = np.where(right, labels, 1 - labels)
    z = np.empty((len(labels), 2), dtype=np.float32)
    z[np.arange(len(labels)), top] = np.log(p_top)
    z[np.arange(len(labels)), 1 - top] = np.log(1 - p_top)
    return z


@pytest.fixture
def hand_case() -> tuple[list[StageSpec], np.ndarray]:
    """A: 1 ms, right and sure on 80 of 100 samples, wrong and unsure (margin .05..0.24) on 20.
    C: 6 ms, right on half of A's failures. B: 10 ms, always right.
    Cheapest 100% cascade: A -> B escalating A's 20 failures: 1 + 0.2*10 = 3 ms."""
    n = 100
    labels = np.arange(n) % 2
    idx = np.arange(n)
    a_right = idx < 80
    a_margin = np.where(a_right, 0.6 + 0.003 * idx, 0.05 + 0.01 * (idx - 80))
    c_right = idx < 90
    c_margin = np.where(c_right, 0.8, 0.02)
    b_margin = np.full(n, 0.9)
    specs = [
        StageSpec("B", 10.0, 28, _two_class_logits(labels, np.ones(n, bool), b_margin)),
        StageSpec("A", 1.0, 14, _two_class_logits(labels, a_right, a_margin)),
        StageSpec("C", 6.0, 20, _two_class_logits(labels, c_right, c_margin)),
    ]
    return specs, labels


def test_picks_the_hand_computed_optimum(hand_case: tuple[list[StageSpec], np.ndarray]) -> None:
    specs, labels = hand_case
    plan = build_cascade(specs, labels, min_accuracy=1.0)
    assert plan.names == ["A", "B"]
    assert plan.predicted_accuracy == 1.0
    assert plan.predicted_latency_ms == pytest.approx(3.0)
    assert plan.escalation_rates == [pytest.approx(0.2)]
    assert 0.24 < plan.thresholds[0] <= 0.6  # between A's least sure failure and its least sure success


def test_latency_budget_mode_maximises_accuracy(hand_case: tuple[list[StageSpec], np.ndarray]) -> None:
    specs, labels = hand_case
    # 2.5 ms lets A -> B escalate 15 inputs (its 15 least sure failures): accuracy 0.95.
    # A -> C could escalate all 20 (1 + 0.2*6 = 2.2 ms) but C fixes only 10 of them: 0.90.
    plan = build_cascade(specs, labels, max_latency=2.5)
    assert plan.names == ["A", "B"]
    assert plan.predicted_accuracy == pytest.approx(0.95)
    assert plan.predicted_latency_ms == pytest.approx(2.5)


def test_three_stages_beat_two_when_they_should() -> None:
    """A (1 ms) sure on 60%; M (3 ms) sure and right on 80% (incl. A's sure ones); B (20 ms) right.
    A->B: 1 + .4*20 = 9; M->B: 3 + .2*20 = 7; A->M->B: 1 + .4*3 + .2*20 = 6.2 (the optimum)."""
    n = 200
    labels = np.arange(n) % 2
    idx = np.arange(n)
    a_right = idx < 120
    m_right = idx < 160
    specs = [
        StageSpec("A", 1.0, 14, _two_class_logits(labels, a_right, np.where(a_right, 0.9, 0.1))),
        StageSpec("M", 3.0, 20, _two_class_logits(labels, m_right, np.where(m_right, 0.9, 0.1))),
        StageSpec("B", 20.0, 28, _two_class_logits(labels, np.ones(n, bool), np.full(n, 0.9))),
        StageSpec("D", 2.0, 16, _two_class_logits(labels, idx % 3 == 0, np.full(n, 0.01))),  # useless
    ]
    plan = build_cascade(specs, labels, min_accuracy=1.0, max_stages=4)
    assert plan.names == ["A", "M", "B"]
    assert plan.predicted_latency_ms == pytest.approx(6.2)
    assert plan.escalation_rates == [pytest.approx(0.4), pytest.approx(0.2)]
    two = build_cascade(specs, labels, min_accuracy=1.0, max_stages=2)
    assert two.names == ["M", "B"] and two.predicted_latency_ms == pytest.approx(7.0)


def _random_candidates(n: int, k: int, seed: int, classes: int = 5) -> tuple[list[StageSpec], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    specs = []
    for i in range(k):
        z = rng.normal(0, 1, (n, classes)).astype(np.float32)
        z[np.arange(n), labels] += 0.5 + 0.6 * i
        specs.append(StageSpec(f"m{i}", 1.0 + 2.0 * i**1.3, 14 + 2 * i, z, 8.0 + 10 * i, 32))
    return specs, labels


@pytest.mark.parametrize("combine", ["last", "seed_alpha"])
def test_two_stages_are_exact_against_brute_force(combine: str) -> None:
    specs, labels = _random_candidates(n=60, k=3, seed=3)
    target = 0.9 * float(np.mean(specs[-1].val_logits.argmax(1) == labels))
    plan = build_cascade(specs, labels, min_accuracy=target, max_stages=2, n_thresholds=None, combine=combine)
    best = math.inf
    for i in range(3):
        for j in range(i + 1, 3):
            conf = np.unique(simulate_conf(specs[i].val_logits))
            for t in [-math.inf, math.inf, *((conf[1:] + conf[:-1]) / 2)]:
                p = CascadePlan([_sp(specs[i]), _sp(specs[j])], [float(t)], combine=combine)
                r = simulate(p, [specs[i].val_logits, specs[j].val_logits], labels)
                if r.accuracy >= target:
                    best = min(best, r.expected_latency_ms)
    assert plan.predicted_accuracy >= target
    assert plan.predicted_latency_ms == pytest.approx(best, rel=1e-9)


def simulate_conf(z: np.ndarray) -> np.ndarray:
    from edgecompress.cascade.planning.confidence import confidence

    return confidence(z, "margin")


def _sp(s: StageSpec) -> StagePlan:
    return StagePlan(s.name, s.input_size, s.latency_ms, s.latency_batch_ms, s.batch_size)


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("combine", ["last", "sum"])
def test_fast_sweep_accounting_equals_simulate(batch: bool, combine: str) -> None:
    """The builder's sorted-prefix sweep gives, for every grid threshold, exactly what simulate gives."""
    specs, labels = _random_candidates(n=120, k=4, seed=5)
    prob = _prepare(
        specs, labels, "max_softmax", combine, 1.6, 4, 0.3, calibrate=False, batch=batch, n_thresholds=20
    )
    ids = (0, 1, 3)
    thr = [float(prob.grid[0][7]), float(prob.grid[1][12])]
    for j in range(2):
        acc, lat, grid = prob.sweep(ids, thr, j)
        for g in range(0, len(grid), 3):
            t = list(thr)
            t[j] = float(grid[g])
            plan = CascadePlan(
                [prob.stage_plans[i] for i in ids],
                t,
                kind="max_softmax",
                combine=combine,
                routing_overhead_ms=0.3,
                batch=batch,
            )
            r = simulate(plan, [prob.logits[i] for i in ids], labels)
            assert acc[g] == pytest.approx(r.accuracy, abs=1e-12)
            assert lat[g] == pytest.approx(r.expected_latency_ms, rel=1e-9)


def test_simulate_accounting_on_a_hand_case() -> None:
    labels = np.array([0, 1, 0, 1])
    # stage 1: margins .8 (right), .1 (wrong), .05 (wrong), .9 (wrong) -> escalates samples 1 and 2
    z1 = np.log(np.array([[0.9, 0.1], [0.55, 0.45], [0.475, 0.525], [0.95, 0.05]], dtype=np.float32))
    z2 = np.log(np.array([[0.5, 0.5], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]], dtype=np.float32))
    stages = [StagePlan("s", 14, 1.0, 4.0, 4), StagePlan("l", 28, 4.0, 10.0, 4)]
    plan = CascadePlan(stages, [0.5], routing_overhead_ms=0.5)
    r = simulate(plan, [z1, z2], labels)
    assert r.exit_stage.tolist() == [0, 1, 1, 0]
    assert r.predictions.tolist() == [0, 1, 1, 0]
    assert r.accuracy == 0.5  # sample 2 -> stage 2 says 1 (label 0); sample 3 exits wrong
    assert r.reach == [1.0, 0.5] and r.escalation_rates == [0.5] and r.exit_fractions == [0.5, 0.5]
    assert r.expected_latency_ms == pytest.approx(1.0 + 0.5 * 4.0 + 0.5 * 0.5)
    # serving batch of 4, affine latency: stage 1 = 4 ms; stage 2 fixed 2 + 2/sample on 2 expected
    # samples, run when at least one escalates (1 - 0.5**4); overhead likewise.
    plan_b = CascadePlan(stages, [0.5], routing_overhead_ms=0.5, batch=True)
    nonempty = 1 - 0.5**4
    assert simulate(plan_b, [z1, z2], labels).expected_latency_ms == pytest.approx(
        4.0 + nonempty * 2.0 + 2.0 * 2 + 0.5 * nonempty
    )


def test_seed_rule_reproduces_out1_plus_alpha_out2() -> None:
    specs, labels = _random_candidates(n=300, k=2, seed=7)
    small, large = specs
    plan = seed_rule_plan(small, large, threshold=0.2, labels=labels)
    assert plan.kind == "margin" and plan.combine == "seed_alpha" and plan.alpha == 1.6
    r = simulate(plan, [small.val_logits, large.val_logits], labels)
    margin = simulate_conf(small.val_logits)
    esc = (margin > 0) & (margin < 0.2)
    assert 0 < esc.sum() < len(labels)
    want = np.where(esc, (small.val_logits + 1.6 * large.val_logits).argmax(1), small.val_logits.argmax(1))
    np.testing.assert_array_equal(r.predictions, want)
    assert plan.predicted_accuracy == pytest.approx(np.mean(want == labels))
    assert plan.escalation_rates == [pytest.approx(esc.mean())]


class _Guarded:
    """A candidate that records attribute reads and fails on anything about the test split."""

    allowed = {"name", "latency_ms", "input_size", "val_logits", "latency_batch_ms", "batch_size"}

    def __init__(self, spec: StageSpec, test_logits: np.ndarray, seen: set[str]) -> None:
        object.__setattr__(self, "_d", {**spec.__dict__, "test_logits": test_logits})
        object.__setattr__(self, "_seen", seen)

    def __getattr__(self, key: str) -> object:
        self._seen.add(key)
        if "test" in key:
            raise AssertionError(f"the builder read {key}")
        if key not in self._d:
            raise AttributeError(key)
        return self._d[key]


def test_builder_never_reads_test_logits() -> None:
    specs, labels = _random_candidates(n=100, k=4, seed=11)
    seen: set[str] = set()
    guarded = [_Guarded(s, np.zeros((5, 5)), seen) for s in specs]
    plan = build_cascade(guarded, labels, min_accuracy=0.5, max_stages=3, calibrate=True)
    front = cascade_front(guarded, labels, max_stages=3, n_targets=2)
    seed_rule_plan(guarded[0], guarded[-1], labels=labels)
    assert seen <= _Guarded.allowed and "val_logits" in seen
    # and the result is the same as with plain StageSpecs: nothing else influenced it
    assert (
        plan.to_dict()
        == build_cascade(specs, labels, min_accuracy=0.5, max_stages=3, calibrate=True).to_dict()
    )
    assert len(front) >= 2


def test_front_is_pareto_sorted_and_contains_the_built_plan() -> None:
    specs, labels = _random_candidates(n=400, k=4, seed=13)
    front = cascade_front(specs, labels, max_stages=3, n_targets=3)
    lats = [p.predicted_latency_ms for p in front]
    accs = [p.predicted_accuracy for p in front]
    assert lats == sorted(lats) and all(b > a for a, b in zip(accs, accs[1:], strict=False))
    plan = build_cascade(specs, labels, min_accuracy=accs[len(accs) // 2], max_stages=2)
    # no front point at least as accurate is cheaper than the built 2-stage optimum by more than rounding
    cheaper = [p for p in front if p.predicted_accuracy >= plan.predicted_accuracy]
    assert min(p.predicted_latency_ms for p in cheaper) <= plan.predicted_latency_ms + 1e-9


@pytest.mark.parametrize("n_models", [0, 1])
def test_fewer_than_two_models_gives_a_clear_message(n_models: int) -> None:
    specs, labels = _random_candidates(n=50, k=n_models or 1, seed=2)
    with pytest.raises(EdgeCompressError, match=f"at least 2 Pareto models; the front has {n_models}"):
        build_cascade(specs[:n_models], labels, min_accuracy=0.5)
    with pytest.raises(EdgeCompressError, match="at least 2 Pareto models"):
        cascade_front(specs[:n_models], labels)


def test_infeasible_target_names_the_closest_cascade(hand_case: tuple[list[StageSpec], np.ndarray]) -> None:
    specs, labels = hand_case
    with pytest.raises(EdgeCompressError, match=r"no cascade .* accuracy >= 1\.0000.*closest"):
        build_cascade(specs[1:], labels, min_accuracy=1.0)  # without B nothing reaches 100%
    with pytest.raises(ValueError, match="exactly one of min_accuracy or max_latency"):
        build_cascade(specs, labels)


def test_plan_round_trips_through_yaml_and_json(hand_case: tuple[list[StageSpec], np.ndarray]) -> None:
    specs, labels = hand_case
    plan = build_cascade(specs, labels, min_accuracy=1.0, calibrate=True, combine="seed_alpha")
    plan.thresholds[-1] = math.inf
    d = plan.to_dict()
    for text in (yaml.safe_dump(d), json.dumps(d)):
        back = CascadePlan.from_dict(yaml.safe_load(text))
        assert back == plan
    with pytest.raises(ValueError, match="version"):
        CascadePlan.from_dict({**d, "version": 99})


def test_ten_candidates_by_ten_thousand_samples_is_fast() -> None:
    specs, labels = _random_candidates(n=10_000, k=10, seed=17, classes=10)
    t0 = time.perf_counter()
    plan = build_cascade(specs, labels, min_accuracy=0.95, max_stages=4)
    elapsed = time.perf_counter() - t0
    assert plan.predicted_accuracy >= 0.95
    assert elapsed < 5.0  # ~0.3 s alone; generous for a shared 2-core machine


def test_stage_spec_from_artefacts_reads_validation_files_only(tmp_path) -> None:
    specs, labels = _random_candidates(n=40, k=1, seed=19)
    trial = tmp_path / "trials" / "7"
    trial.mkdir(parents=True)
    metrics = {
        "latency_ms": 0.4,
        "latency_batch_ms": 5.7,
        "batch_size": 64,
        "input_size": 20,
        "accuracy": 0.9,
    }
    (trial / "metrics.json").write_text(json.dumps(metrics))
    np.save(trial / "val_logits.npy", specs[0].val_logits)
    np.save(trial / "val_labels.npy", labels)
    (trial / "test_logits.npy").write_bytes(b"not a numpy file: reading it would fail")
    spec, got_labels = stage_spec_from_artefacts(trial, name="trial-7")
    assert (spec.name, spec.latency_ms, spec.latency_batch_ms, spec.batch_size, spec.input_size) == (
        "trial-7",
        0.4,
        5.7,
        64,
        20,
    )
    np.testing.assert_array_equal(spec.val_logits, specs[0].val_logits)
    np.testing.assert_array_equal(got_labels, labels)
    # a crop: dic trial's stage is its whole pipeline from the raw canvas: its input is the canvas
    (trial / "metrics.json").write_text(json.dumps({**metrics, "crop": "dic", "pipeline_input_size": 48}))
    assert stage_spec_from_artefacts(trial)[0].input_size == 48
    (trial / "val_logits.npy").unlink()
    with pytest.raises(EdgeCompressError, match=r"artefact missing: .*trials/7/val_logits.npy"):
        stage_spec_from_artefacts(trial)


def test_escalation_rule_is_open_band_on_arrays_and_tensors() -> None:
    import torch

    from edgecompress.cascade.planning.plan import escalates

    conf = [0.1, 0.2, 0.5, 0.8, 0.9]
    want = [False, False, True, False, False]  # low < conf < threshold, both ends excluded
    got = escalates(np.array(conf), 0.2, 0.8)
    assert got.dtype == bool and got.tolist() == want
    t = escalates(torch.tensor(conf), 0.2, 0.8)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.bool and t.tolist() == want
    assert escalates(np.array(conf), -math.inf, 0.8).tolist() == [True, True, True, False, False]
