"""bench/search.py on a tiny synthetic table: lookups, hypervolume fractions, export and overhead stay working."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from edgecompress.search import space_for
from edgecompress.spaces.experiment import parse_experiment

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "bench" / "search.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_search"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def exp():
    raw = yaml.safe_load((ROOT / "bench" / "fmnist-table.yaml").read_text())
    raw["space"]["prune"] = {"low": 0.0, "high": 0.75, "step": 0.25}  # 4 x 3 bits x 2 res = 24 points
    raw["space"]["resolution"] = {"choices": [0.5, 1.0]}
    return parse_experiment(raw, "synthetic")


def synthetic_table(space) -> pd.DataFrame:
    """Every point of the space with a smooth accuracy/latency trade-off; one point failed."""
    rows = []
    grid = space.grid()
    for i, values in enumerate(itertools.product(*grid.values())):
        p = dict(zip(grid, values))
        acc = 0.92 - 0.3 * p["prune"] ** 2 - 0.04 * (p["w_bits"] == 4) - 0.08 * (1 - p["resolution"])
        lat = p["resolution"] ** 2 * (1 - p["prune"]) ** 2 * {32: 1.0, 8: 0.5, 4: 0.3}[p["w_bits"]]
        rows.append({**{f"params_{k}": v for k, v in p.items()}, "number": i, "state": "COMPLETE",
                     "accuracy": acc, "latency_ms": lat, "duration_s": 10.0})
    rows[-1].update(state="FAIL", accuracy=np.nan, latency_ms=np.nan)
    return pd.DataFrame(rows)


def test_lookup_study_returns_table_values_uncompressed_first(bench, exp):
    space = space_for(exp)
    df = synthetic_table(space)
    index = bench.table_index(df, space, ["accuracy", "latency_ms"])
    assert len(index) == space.size() == 24 and sum(v is None for v in index.values()) == 1
    rows, resolved = bench.run_lookup(bench.product_sampler("random"), 0, 12, space, exp, index)
    assert resolved == "random" and rows.shape == (12, 2)
    table_vals = {v for v in index.values() if v is not None}
    assert all(tuple(r) in table_vals for r in rows if np.all(np.isfinite(r)))
    base = df[(df.params_prune == 0) & (df.params_w_bits == 32) & (df.params_resolution == 1.0)].iloc[0]
    assert tuple(rows[0]) == (base.accuracy, base.latency_ms)  # the uncompressed model is enqueued first
    again, _ = bench.run_lookup(bench.product_sampler("random"), 0, 12, space, exp, index)
    np.testing.assert_array_equal(rows, again)  # seeded


def test_compare_samplers_fractions_and_auto_grid(bench, exp):
    space = space_for(exp)
    df = synthetic_table(space)
    samplers = {s: bench.product_sampler(s) for s in ("random", "auto")}
    res = bench.compare_samplers(df, exp, space, samplers, budgets=(4, 30), seeds=range(3))
    hv = res["hv_fraction"]
    assert all(0.0 < hv[s][b] <= 1.0 + 1e-12 for s in hv for b in ("4", "30"))
    # budget 30 covers the 24-point space: auto resolves to grid and finds the whole front
    assert res["sampler_choice"]["auto"] == {"4": "tpe", "30": "grid"}
    assert hv["auto"]["30"] == pytest.approx(1.0)
    assert hv["random"]["4"] < 1.0 and len(res["hv_fraction_runs"]["random"]["4"]) == 3
    pts = df.dropna(subset=["accuracy"])[["accuracy", "latency_ms"]].to_numpy()
    front = sum(not any((q[0] >= p[0] and q[1] <= p[1]) and (q[0] > p[0] or q[1] < p[1]) for q in pts) for p in pts)
    assert res["true_front_size"] == front
    g = bench.goals(hv, (4, 30))
    assert g["auto_beats_random"]["30"] == (hv["auto"]["30"] > hv["random"]["30"])


def test_export_table_keeps_params_and_objectives(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path))
    study = optuna.create_study(study_name="tbl", storage=f"sqlite:///{tmp_path}/tbl.db",
                                directions=["maximize", "minimize"])
    study.set_user_attr("objectives", [{"name": "accuracy", "direction": "maximize"},
                                       {"name": "latency_ms", "direction": "minimize"}])
    dist = {"prune": optuna.distributions.FloatDistribution(0.0, 0.75, step=0.25)}
    for i, (p, a, lat) in enumerate([(0.0, 0.9, 1.0), (0.5, 0.8, 0.4)]):
        study.add_trial(optuna.trial.create_trial(params={"prune": p}, distributions=dist, values=[a, lat],
                                                  user_attrs={"latency_source": "measured", "eval_seconds": 3.0 + i,
                                                              "val_logits_note": "x"}))
    out = bench.export_table("tbl", tmp_path / "t.csv")
    df = pd.read_csv(out)
    assert list(df["params_prune"]) == [0.0, 0.5] and list(df["accuracy"]) == [0.9, 0.8]
    assert list(df["eval_seconds"]) == [3.0, 4.0] and "val_logits_note" not in df.columns


def test_overhead_measures_search_without_evaluation(bench):
    over = bench.measure_overhead(trials=3)
    assert over["trials"] == 3 and over["sampler"] == "tpe"
    assert 0 < over["seconds_per_trial"] < 5
