"""Constrained Pareto sorting, hypervolume, select and knee point against hand-computed cases."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

from edgecompress.errors import EdgeCompressError
from edgecompress.results import hypervolume_history, knee_point, pareto_front, parse_latency_ms, select
from edgecompress.study import hypervolume, non_dominated, nondominated_ranks, reference_point, study_to_frame
from edgecompress.study.hypervolume import compute_hypervolume, hypervolume_numpy

ACC_LAT = ["maximize", "minimize"]


def test_max_min_mix():
    # (accuracy, latency): (0.9, 2) and (0.8, 1) trade off; (0.85, 2.5) is beaten by (0.9, 2)
    pts = [[0.9, 2.0], [0.8, 1.0], [0.85, 2.5], [0.7, 1.0]]
    assert non_dominated(pts, ACC_LAT).tolist() == [True, True, False, False]
    # flipping the directions flips which points win
    assert non_dominated(pts, ["minimize", "maximize"]).tolist() == [False, False, True, True]
    assert nondominated_ranks(pts, ACC_LAT).tolist() == [0, 0, 1, 1]


def test_identical_points_are_both_on_the_front():
    pts = [[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [2.0, 2.0]]
    assert non_dominated(pts, ["minimize", "minimize"]).tolist() == [True, True, True, False, False]
    assert nondominated_ranks(pts, ["minimize", "minimize"]).tolist() == [0, 0, 0, 1, 1]


def test_feasible_dominates_infeasible_and_less_violation_wins():
    pts = [[0.99, 0.1], [0.8, 1.0], [0.9, 2.0], [0.95, 0.5], [0.6, 3.0]]
    viol = [0.5, 0.0, 0.0, 0.2, 0.2]  # 0 and 3 are better on both objectives but infeasible
    assert non_dominated(pts, ACC_LAT, viol).tolist() == [False, True, True, False, False]
    # Deb's rule: feasible (rank 0), then infeasible by total violation: 0.2 (3 and 4 tie), then 0.5
    assert nondominated_ranks(pts, ACC_LAT, viol).tolist() == [2, 0, 0, 1, 1]
    # nothing feasible: the least-violating points form the front, whatever their objectives
    assert non_dominated(pts[3:], ACC_LAT, [0.3, 0.1]).tolist() == [False, True]


def test_three_objectives():
    # minimise (latency, size), maximise accuracy
    dirs = ["minimize", "minimize", "maximize"]
    pts = [[1, 10, 0.9], [2, 5, 0.9], [2, 10, 0.9], [1, 10, 0.8], [3, 3, 0.95], [3, 3, 0.95]]
    assert non_dominated(pts, dirs).tolist() == [True, True, False, False, True, True]


def test_non_finite_rows_are_never_on_the_front():
    pts = [[np.nan, 0.0], [1.0, 1.0]]
    assert non_dominated(pts, ["minimize", "minimize"]).tolist() == [False, True]
    assert nondominated_ranks(pts, ["minimize", "minimize"]).tolist() == [1, 0]


def test_direction_errors_name_the_argument():
    with pytest.raises(ValueError, match="directions"):
        non_dominated([[1, 2]], ["up", "minimize"])
    with pytest.raises(ValueError, match="directions"):
        non_dominated([[1, 2]], ["minimize"])


def test_hypervolume_two_objectives_by_hand():
    # boxes against (accuracy 0, latency 2 ms): 0.9*1.0 + 0.8*1.5 - overlap 0.8*1.0 = 1.3
    assert hypervolume([[0.9, 1.0], [0.8, 0.5]], ACC_LAT, [0.0, 2.0]) == pytest.approx(1.3)
    # a dominated point and a duplicate add nothing; a point beyond the reference adds nothing
    pts = [[0.9, 1.0], [0.8, 0.5], [0.7, 1.5], [0.9, 1.0], [0.99, 2.5]]
    assert hypervolume(pts, ACC_LAT, [0.0, 2.0]) == pytest.approx(1.3)


def test_hypervolume_three_objectives_by_hand():
    # unit corners against (2,2,2): 3 boxes of 4, pairwise overlaps of 2, triple overlap 1 -> 12 - 6 + 1
    pts = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)
    ref = np.full(3, 2.0)
    assert compute_hypervolume(pts, ref) == pytest.approx(7.0)
    assert hypervolume_numpy(pts, ref) == pytest.approx(7.0)
    # the same points as accuracies (maximised) against reference 0
    assert hypervolume(2 - pts, ["maximize"] * 3, [0, 0, 0]) == pytest.approx(7.0)


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_numpy_fallback_matches_optuna(dims):
    pts = np.random.default_rng(dims).random((25 if dims < 4 else 10, dims))
    ref = np.full(dims, 1.05)
    assert hypervolume_numpy(pts, ref) == pytest.approx(compute_hypervolume(pts, ref), rel=1e-9)


def test_fallback_is_used_without_optuna(monkeypatch):
    hv_mod = importlib.import_module("edgecompress.study.hypervolume")  # the package re-exports a function
    monkeypatch.setattr(hv_mod, "_optuna_hv", None)
    assert compute_hypervolume(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([2.0, 2.0])) == pytest.approx(3.0)


def test_reference_point_rule():
    pts = [[0.9, 1.0], [0.7, 3.0], [0.8, 2.0]]
    # worst accuracy 0.7 minus 10% of 0.2; worst latency 3 plus 10% of 2
    assert reference_point(np.array(pts), ACC_LAT) == pytest.approx([0.68, 3.2])
    # zero range: pad 10% of |worst|
    assert reference_point(np.array([[0.5, 2.0]]), ACC_LAT) == pytest.approx([0.45, 2.2])
    # no reference given: the rule applied to the points themselves
    assert hypervolume(pts, ACC_LAT) == pytest.approx(hypervolume(pts, ACC_LAT, [0.68, 3.2]))


def _frame(rows, objectives=(("accuracy", "maximize"), ("latency_ms", "minimize"))):
    df = pd.DataFrame(rows)
    df["state"] = df.get("state", "COMPLETE")
    df.attrs["objectives"] = [{"name": n, "direction": d} for n, d in objectives]
    return df


def test_pareto_front_of_a_real_study_sorted_by_latency(study_db, spec):
    study, _ = study_db
    front = pareto_front(study)
    assert list(front["number"]) == spec.FRONT
    assert front["feasible"].all()
    assert list(pareto_front(study_to_frame(study))["number"]) == spec.FRONT


def test_pareto_front_without_feasible_trials_keeps_the_least_violating():
    df = _frame([
        {"number": 0, "accuracy": 0.9, "latency_ms": 3.0, "feasible": False, "total_violation": 1.0},
        {"number": 1, "accuracy": 0.5, "latency_ms": 5.0, "feasible": False, "total_violation": 0.5},
        {"number": 2, "accuracy": 0.95, "latency_ms": 1.0, "feasible": False, "total_violation": 2.0},
    ])
    front = pareto_front(df)
    assert list(front["number"]) == [1] and not front["feasible"].any()


def test_hypervolume_history_counts_only_feasible_and_never_decreases():
    rows = [
        {"number": 0, "accuracy": 0.5, "latency_ms": 2.0, "feasible": True, "total_violation": 0.0},
        {"number": 1, "accuracy": 0.99, "latency_ms": 0.1, "feasible": False, "total_violation": 1.0},
        {"number": 2, "accuracy": 0.4, "latency_ms": 2.5, "feasible": True, "total_violation": 0.0},
        {"number": 3, "accuracy": 0.8, "latency_ms": 1.0, "feasible": True, "total_violation": 0.0},
        {"number": 4, "accuracy": 0.9, "latency_ms": 3.0, "feasible": True, "total_violation": 0.0},
    ]
    hist = hypervolume_history(_frame(rows), reference=[0.0, 4.0])
    assert list(hist["number"]) == [0, 1, 2, 3, 4]
    # by hand against (acc 0, 4 ms): 0.5*2=1.0; +0 (infeasible); +0 (dominated); union with 0.8*3=2.4
    # -> 2.4 (covers trial 0's box); then 0.9*1 adds 0.1*1 beyond 0.8 -> 2.5
    assert hist["hypervolume"].tolist() == pytest.approx([1.0, 1.0, 1.0, 2.4, 2.5])
    assert hist.attrs["reference"] == [0.0, 4.0]


def test_hypervolume_history_of_a_study_uses_the_documented_reference(study_db):
    study, _ = study_db
    hist = hypervolume_history(study)
    df = study_to_frame(study)
    done = df[df["state"] == "COMPLETE"]
    expected_ref = reference_point(done[["accuracy", "latency_ms"]].to_numpy(), ACC_LAT)
    assert hist.attrs["reference"] == pytest.approx(list(expected_ref))
    feas = done[done["feasible"]]
    final = hypervolume(feas[["accuracy", "latency_ms"]].to_numpy(), ACC_LAT, expected_ref)
    assert hist["hypervolume"].iloc[-1] == pytest.approx(final)
    assert np.all(np.diff(hist["hypervolume"]) >= 0)


FRONT_ROWS = [  # a front sorted by latency
    {"number": 10, "accuracy": 0.80, "latency_ms": 0.5, "size_bytes": 1000, "feasible": True},
    {"number": 11, "accuracy": 0.88, "latency_ms": 1.0, "size_bytes": 3000, "feasible": True},
    {"number": 12, "accuracy": 0.91, "latency_ms": 2.0, "size_bytes": 6000, "feasible": True},
    {"number": 13, "accuracy": 0.93, "latency_ms": 4.0, "size_bytes": 9000, "feasible": True},
]


def test_select_under_budgets():
    assert select(FRONT_ROWS, max_latency=2.0).number == 12  # most accurate within 2 ms
    assert select(FRONT_ROWS, max_latency=1.9).number == 11
    assert select(FRONT_ROWS, min_accuracy=0.85).number == 11  # fastest above the floor
    assert select(FRONT_ROWS, max_latency=3.0, max_size=4000).number == 11
    assert select(FRONT_ROWS).number == 13  # no budget: the most accurate
    s = select(pd.DataFrame(FRONT_ROWS), max_latency=2.0, min_accuracy=0.85, prefer="latency")
    assert s.number == 11 and s.feasible and s.violations == {}


def test_select_with_an_infeasible_budget_returns_the_nearest_point_and_its_violation():
    s = select(FRONT_ROWS, max_latency=0.4)
    assert s.number == 10 and s.feasible is False
    assert s.violations == {"max_latency_ms": pytest.approx(0.1)}
    assert "nearest is trial 10" in s.reason
    # accuracy floor out of reach: the most accurate point, missing by 0.02
    s = select(FRONT_ROWS, min_accuracy=0.95)
    assert s.number == 13 and s.violations == {"min_accuracy": pytest.approx(0.02)}
    # both budgets: the smallest sum of misses relative to each limit
    s = select(FRONT_ROWS, max_latency=0.5, min_accuracy=0.9)
    # trial 10: misses accuracy by 0.1/0.9=0.111; trial 11: 1.0 + 0.02/0.9 = 1.02; trial 12: 3 + 0
    assert s.number == 10 and set(s.violations) == {"min_accuracy"}


def test_select_prefers_trials_that_meet_the_study_constraints():
    rows = [dict(FRONT_ROWS[0], feasible=False, violation_max_macs=5.0), FRONT_ROWS[1]]
    s = select(rows, max_latency=0.8)
    assert s.number == 11 and not s.feasible  # 10 is faster but breaks the study's own constraint
    rows = [dict(FRONT_ROWS[0], feasible=False, violation_max_macs=5.0)]
    s = select(rows, max_latency=0.8)
    assert s.number == 10 and s.violations == {"max_macs": 5.0}


def test_select_argument_errors():
    with pytest.raises(ValueError, match="max_latency"):
        select(FRONT_ROWS, max_latency=-1)
    with pytest.raises(ValueError, match="min_accuracy"):
        select(FRONT_ROWS, min_accuracy=1.5)
    with pytest.raises(ValueError, match="size_bytes"):
        select([{"number": 1, "accuracy": 0.5, "latency_ms": 1.0}], max_size=10)
    with pytest.raises(EdgeCompressError, match="empty"):
        select([], max_latency=1.0)


def test_select_on_a_real_front(study_db):
    study, _ = study_db
    front = pareto_front(study)
    assert select(front, max_latency=1.2).number in (2, 8)
    s = select(front, max_latency=0.1)
    assert s.number == 4 and s.violations == {"max_latency_ms": pytest.approx(0.4)}


def test_knee_point_on_a_hand_made_front():
    # normalised (accuracy, speed): (0,1) (0.8,0.8) (0.9,0.5) (1,0): distance to x+y=1 is largest at 0.8,0.8
    rows = [
        {"number": 1, "accuracy": 0.5, "latency_ms": 0.0},
        {"number": 2, "accuracy": 0.9, "latency_ms": 0.2},
        {"number": 3, "accuracy": 0.95, "latency_ms": 0.5},
        {"number": 4, "accuracy": 1.0, "latency_ms": 1.0},
    ]
    assert knee_point(rows).number == 2
    rows[2]["latency_ms"] = 0.05  # now (0.9, 0.95) is the farthest from the extremes' line
    assert knee_point(_frame(rows)).number == 3
    assert knee_point(rows[:2]).number == 2  # fewer than three points: best on the first objective


def test_parse_latency():
    assert parse_latency_ms("2ms") == 2.0
    assert parse_latency_ms("500us") == pytest.approx(0.5)
    assert parse_latency_ms("0.5 s") == 500.0
    assert parse_latency_ms("3") == 3.0
    with pytest.raises(ValueError, match="latency"):
        parse_latency_ms("fast")
