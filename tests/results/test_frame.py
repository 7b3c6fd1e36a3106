"""study_to_frame and load_study on a real SQLite Optuna study."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from edgecompress.errors import EdgeCompressError
from edgecompress.study import load_study, study_objectives, study_to_frame


def test_one_row_per_trial_with_states_and_details(study_db, spec):
    study, _ = study_db
    df = study_to_frame(study)
    assert list(df["number"]) == sorted(spec.TRIALS)
    by_n = df.set_index("number")
    assert by_n.loc[5, "state"] == "FAIL" and by_n.loc[5, "state_detail"] == "failed"
    assert by_n.loc[5, "fail_reason"] == spec.FAIL_REASON
    assert by_n.loc[7, "state"] == "PRUNED"
    assert by_n.loc[0, "state"] == "COMPLETE" and by_n.loc[0, "state_detail"] == "infeasible"
    expected_feasible = {n for n, s in spec.TRIALS.items() if isinstance(s, tuple) and s[5] == "complete"}
    assert set(by_n.index[by_n["feasible"]]) == expected_feasible


def test_objectives_params_metrics_and_violations(study_db, spec):
    study, _ = study_db
    df = study_to_frame(study).set_index("number")
    assert df.attrs["objectives"] == study.user_attrs["objectives"]
    assert df.attrs["constraints"] == {"max_latency_ms": 2.0, "min_accuracy": 0.8}  # None dropped
    for n, trial in spec.TRIALS.items():
        if not isinstance(trial, tuple):
            assert math.isnan(df.loc[n, "accuracy"])
            continue
        acc, lat, prune, bits, res, _, source = trial
        assert df.loc[n, "accuracy"] == acc and df.loc[n, "latency_ms"] == lat
        assert df.loc[n, "params_prune"] == prune and df.loc[n, "params_bits"] == bits
        assert df.loc[n, "cfg_w_bits"] == bits and df.loc[n, "cfg_depth"] == (1, 2, 1)
        assert df.loc[n, "latency_source"] == source and df.loc[n, "device"] == "cpu"
        assert df.loc[n, "latency_p90_ms"] == pytest.approx(lat * 1.1)
        assert df.loc[n, "violation_max_latency_ms"] == pytest.approx(lat - 2.0)
        assert df.loc[n, "total_violation"] == pytest.approx(max(0, lat - 2.0) + max(0, 0.8 - acc))
        assert df.loc[n, "config"]["resolution"] == res
        assert df.loc[n, "artefact_dir"] == f"runs/fm/trials/{n}"


def test_violations_fall_back_to_optuna_constraints(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'c.db'}", directions=["maximize", "minimize"])
    study.add_trial(create_trial(values=[0.9, 3.0], constraints={"max_latency_ms": 1.0}))
    study.add_trial(create_trial(values=[0.8, 1.0], constraints={"max_latency_ms": -1.0}))
    study.add_trial(create_trial(state=TrialState.FAIL))
    # the evaluator's violations cover latency only; the accuracy floor comes from Optuna's constraints
    study.add_trial(create_trial(values=[0.7, 0.5], constraints={"min_accuracy": 0.1, "max_latency_ms": -1.5},
                                 user_attrs={"violations": {"max_latency_ms": -1.0}}))
    df = study_to_frame(study)
    assert list(df["feasible"]) == [False, True, False, False]
    assert df.loc[0, "violation_max_latency_ms"] == 1.0
    assert df.loc[3, "violation_max_latency_ms"] == -1.0 and df.loc[3, "violation_min_accuracy"] == 0.1
    assert list(df["state_detail"]) == ["infeasible", "complete", "failed", "infeasible"]
    # no "objectives" user attr: Optuna's generic names with the study's directions
    assert study_objectives(study) == [
        {"name": "value_0", "direction": "maximize"}, {"name": "value_1", "direction": "minimize"}
    ]
    values = df["value_1"].tolist()
    assert values[:2] == [3.0, 1.0] and math.isnan(values[2]) and values[3] == 0.5


def test_empty_study_has_the_base_columns(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("objectives", [{"name": "accuracy", "direction": "maximize"},
                                       {"name": "latency_ms", "direction": "minimize"}])
    df = study_to_frame(study)
    assert len(df) == 0
    assert {"number", "state", "feasible", "accuracy", "latency_ms", "fail_reason"} <= set(df.columns)


def test_load_study_by_name_url_and_path(study_db, tmp_path, spec):
    _, url = study_db
    assert load_study("fm").study_name == "fm"  # runs_dir()/fm.db
    assert len(load_study(url).trials) == len(spec.TRIALS)
    assert load_study(str(tmp_path / "fm.db")).study_name == "fm"
    assert load_study("fm", storage=url).study_name == "fm"


def test_load_study_errors_list_what_exists(study_db, tmp_path, spec):
    _, url = study_db
    with pytest.raises(EdgeCompressError, match=r"study 'nope' not found.*fm"):
        load_study("nope")
    assert not (tmp_path / "nope.db").exists()
    with pytest.raises(EdgeCompressError, match=r"'other' not found in .*studies there: fm"):
        load_study("other", storage=url)
    spec.make_study(url, name="fm2")
    with pytest.raises(EdgeCompressError, match=r"several studies \(fm, fm2\)"):
        load_study(url)
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    with pytest.raises(EdgeCompressError, match="does not exist"):
        load_study(missing)
    assert not (tmp_path / "missing.db").exists()


def test_load_study_from_a_journal_file(tmp_path, monkeypatch, spec):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path))
    path = tmp_path / "jr.journal"
    spec.make_study(JournalStorage(JournalFileBackend(str(path))), name="jr")
    assert len(load_study("jr").trials) == len(spec.TRIALS)  # runs_dir()/jr.journal
    assert load_study(f"journal:{path}").study_name == "jr"
    assert load_study(str(path)).study_name == "jr"
    assert list(study_to_frame(load_study("jr", storage=str(path)))["number"]) == sorted(spec.TRIALS)


def test_load_study_on_a_file_that_is_not_a_storage_is_one_line(tmp_path, monkeypatch):
    """A text file named x.db (or a garbage journal) is a StorageError naming the file, not an SQLAlchemy
    traceback or a misleading 'no studies'; whichever way the file is named."""
    from edgecompress.errors import StorageError

    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path))
    (tmp_path / "x.db").write_text("this is not a database\n" * 50)
    (tmp_path / "j.journal").write_text("not json either\n")
    for args in [("x",), (str(tmp_path / "x.db"),), (f"sqlite:///{tmp_path / 'x.db'}",),
                 ("fm", str(tmp_path / "x.db")), ("fm", f"sqlite:///{tmp_path / 'x.db'}")]:
        with pytest.raises(StorageError, match=r"x\.db: not an SQLite database") as e:
            load_study(*args)
        assert "\n" not in str(e.value)
    with pytest.raises(StorageError, match=r"j\.journal: not an Optuna journal"):
        load_study(str(tmp_path / "j.journal"))
    assert (tmp_path / "x.db").read_text().startswith("this is not")  # left as it was
