"""A small real SQLite Optuna study in the search engineer's format (objectives, metrics, violations)."""

from __future__ import annotations

import shutil
import types

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

DISTS = {
    "prune": FloatDistribution(0.0, 0.9),
    "bits": CategoricalDistribution([4, 8, 32]),
    "resolution": FloatDistribution(0.5, 1.0),
}
OBJECTIVES = [{"name": "accuracy", "direction": "maximize"}, {"name": "latency_ms", "direction": "minimize"}]
CONSTRAINTS = {"max_latency_ms": 2.0, "min_accuracy": 0.8, "max_size_bytes": None}

# number: (accuracy, latency_ms, prune, bits, resolution, state_detail, latency_source)
TRIALS = {
    0: (0.95, 3.0, 0.0, 32, 1.0, "infeasible", "measured"),  # best accuracy but breaks max latency
    1: (0.92, 1.5, 0.25, 8, 1.0, "complete", "measured"),
    2: (0.90, 1.0, 0.5, 8, 1.0, "complete", "measured"),
    3: (0.91, 1.8, 0.25, 32, 0.75, "complete", "measured"),  # dominated by 1
    4: (0.85, 0.5, 0.5, 4, 0.75, "complete", "estimated"),  # sub-8-bit: estimated latency
    5: None,  # FAIL
    6: (0.70, 0.3, 0.75, 4, 0.5, "infeasible", "estimated"),  # breaks min accuracy
    7: "pruned",
    8: (0.90, 1.0, 0.5, 8, 1.0, "complete", "measured"),  # identical to 2: both on the front
}
FRONT = [4, 2, 8, 1]  # sorted by latency
FAIL_REASON = "RuntimeError: CUDA out of memory"


def _violations(acc: float, lat: float) -> dict[str, float]:
    return {"max_latency_ms": round(lat - 2.0, 6), "min_accuracy": round(0.8 - acc, 6)}


def make_study(storage: str, name: str = "fm") -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"])
    study.set_user_attr("objectives", OBJECTIVES)
    study.set_user_attr("constraints", CONSTRAINTS)
    study.set_user_attr("experiment", {"dataset": {"name": "fashion_mnist"}})
    for n in sorted(TRIALS):
        spec = TRIALS[n]
        params = {"prune": 0.1 * (n % 5), "bits": 8, "resolution": 1.0}
        if spec is None:
            study.add_trial(create_trial(
                state=TrialState.FAIL, params=params, distributions=DISTS,
                user_attrs={"fail_reason": FAIL_REASON, "state_detail": "failed"},
            ))
            continue
        if spec == "pruned":
            study.add_trial(create_trial(
                state=TrialState.PRUNED, params=params, distributions=DISTS,
                user_attrs={"state_detail": "pruned"}, intermediate_values={0: 0.4},
            ))
            continue
        acc, lat, prune, bits, res, detail, source = spec
        viol = _violations(acc, lat)
        config = {"prune": prune, "depth": [1, 2, 1], "w_bits": bits, "a_bits": bits, "resolution": res}
        study.add_trial(create_trial(
            values=[acc, lat],
            params={"prune": prune, "bits": bits, "resolution": res},
            distributions=DISTS,
            user_attrs={
                "accuracy": acc, "latency_ms": lat, "latency_p90_ms": lat * 1.1, "latency_source": source,
                "macs": int(1e6 * (1 - prune)), "size_bytes": int(4e5 * (1 - prune) * bits / 32),
                "device": "cpu", "backend": "onnxruntime", "config": config, "config_hash": f"h{n}",
                "state_detail": detail, "violations": viol, "artefact_dir": f"runs/fm/trials/{n}",
            },
            constraints=viol,
        ))
    return study


@pytest.fixture
def spec():
    """The study's expected content (trials, front, fail reason) and its builder."""
    return types.SimpleNamespace(
        TRIALS=TRIALS, FRONT=FRONT, FAIL_REASON=FAIL_REASON, OBJECTIVES=OBJECTIVES, make_study=make_study
    )


@pytest.fixture(scope="session")
def _study_template(tmp_path_factory):
    """Build the SQLite file once; each test gets its own copy."""
    path = tmp_path_factory.mktemp("study") / "fm.db"
    make_study(f"sqlite:///{path}")
    return path


@pytest.fixture
def study_db(_study_template, tmp_path, monkeypatch):
    """(study, storage URL) for a SQLite study named 'fm' at <EDGECOMPRESS_RUNS>/fm.db."""
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path))
    shutil.copyfile(_study_template, tmp_path / "fm.db")
    url = f"sqlite:///{tmp_path / 'fm.db'}"
    return optuna.load_study(study_name="fm", storage=url), url


# ---- a real study: the search's objective + the real evaluator on a Fashion-MNIST subset ---------------
REAL_STUDY = "fmx"
REAL_EXPERIMENT = {
    "name": "results-real",
    "dataset": {"train_subset": 256, "val_subset": 200, "test_subset": 100},
    "model": {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}},
    "base_training": {"epochs": 1, "batch_size": 64},
    "finetune": {"epochs": 1, "train_subset": 128, "batch_size": 64},
    "device": {"device": "cpu", "max_seconds": 0.2, "min_repeats": 5, "batch_size": 8},
    "space": {"prune": {"choices": [0.0, 0.25, 0.5]}, "bits": {"choices": [32, 8, 4]},
              "resolution": {"choices": [0.5, 0.75, 1.0]}},
    "budget": {"trials": 3, "sampler": "random", "enqueue_uncompressed": True, "enqueue": [
        {"prune": 0.5, "w_bits": 8, "a_bits": 8, "resolution": 0.75},
        {"prune": 0.25, "w_bits": 4, "a_bits": 4, "resolution": 0.5},
    ]},
}


@pytest.fixture(scope="session")
def real_study_template(tmp_path_factory, fmnist_dir):
    """(folder, study name, DataBundle): 3 real trials (fp32, int8, 4-bit estimated) in folder/fmx.db.

    Artefacts live under folder/fmx/trials/<n>/ with absolute paths, so copies of the .db stay valid.
    """
    from edgecompress.evaluators.data import load_data
    from edgecompress.evaluators.evaluator import CompressionEvaluator
    from edgecompress.search import run_search
    from edgecompress.spaces import parse_experiment

    folder = tmp_path_factory.mktemp("realstudy").resolve()
    exp = parse_experiment(REAL_EXPERIMENT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECOMPRESS_RUNS", str(folder))
        data = load_data(exp.dataset, exp.seed)
        ev = CompressionEvaluator(exp, data=data)
        summary = run_search(exp, REAL_STUDY, storage=f"sqlite:///{folder / 'fmx.db'}", trials=3, evaluator=ev)
    assert summary.stats.finished == 3, summary
    return folder, REAL_STUDY, data


@pytest.fixture
def real_db(real_study_template, tmp_path, monkeypatch):
    """A private copy of the real study at <EDGECOMPRESS_RUNS>/fmx.db (url, name, data, runs, template folder)."""
    import sqlite3

    folder, name, data = real_study_template
    src, dst = sqlite3.connect(folder / "fmx.db"), sqlite3.connect(tmp_path / "fmx.db")
    with dst:
        src.backup(dst)  # the search's SQLite runs in WAL mode: a file copy may miss committed rows
    src.close()
    dst.close()
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path))
    return types.SimpleNamespace(url=f"sqlite:///{tmp_path / 'fmx.db'}", name=name, data=data, runs=tmp_path,
                                 template=folder)


# ---- a hand-made study where estimated trials dominate measured ones (tests/results/handmade.py) -------------
def load_handmade():  # noqa: ANN201 - the module
    """tests/results/handmade.py as a module (test folders are not packages)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("handmade", Path(__file__).with_name("handmade.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def handmade(tmp_path, monkeypatch):
    """The hand-made module with its study built at <EDGECOMPRESS_RUNS>/hm.db (attribute `study`, `runs`)."""
    hm = load_handmade()
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path))
    hm.study = hm.make_study(tmp_path)
    hm.runs = tmp_path
    return hm


@pytest.fixture
def mixed_calibrations(tmp_path, monkeypatch):
    """The hand-made study (in tmp_path/mixed) with measured trials 2 and 4 timed against a later, 9.6%-slower
    reference calibration and estimated trial 5 against a third (an estimate is not measured: not counted)."""
    hm = load_handmade()
    runs = tmp_path / "mixed"
    runs.mkdir()
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(runs))
    later = ("2026-11-28T11:00:00", 0.195)
    hm.study = hm.make_study(runs, {2: later, 4: later, 5: ("2026-11-28T12:00:00", 0.3)})
    hm.runs = runs
    return hm
