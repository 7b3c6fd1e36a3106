"""make_objective: user-attr contract, artefacts, config-hash cache, failures, infeasible trials."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.search.objective import TrialFailed, constraint_values, make_objective
from edgecompress.search.optuna_runner import run_one
from edgecompress.search.study_setup import space_for


def _study(tmp_path: Path, n_obj: int = 2) -> optuna.Study:
    return optuna.create_study(
        storage=f"sqlite:///{tmp_path / 's.db'}", directions=["maximize", "minimize"][:n_obj]
    )


def _objective(tmp_path: Path, fakes, evaluator, **exp_over: object):  # noqa: ANN001
    exp = fakes.small_experiment(**exp_over)
    return make_objective(space_for(exp), evaluator, tmp_path / "study", exp.objectives, exp.constraints)


POINT = {"prune": 0.25, "depth": 1.0, "w_bits": 8, "resolution": 1.0}


def test_trial_attrs_values_and_artefacts(tmp_path: Path, fake_evaluator, fakes) -> None:
    study = _study(tmp_path)
    study.enqueue_trial(POINT)
    objective = _objective(tmp_path, fakes, fake_evaluator)
    run_one(study, study.ask(), objective)
    t = study.trials[0]
    cfg = t.user_attrs["config"]
    expected = fakes.fake_metrics(space_for(fakes.small_experiment()).from_params(POINT))
    assert t.state == TrialState.COMPLETE
    assert t.values == [expected["accuracy"], expected["latency_ms"]]
    for key, value in expected.items():
        assert t.user_attrs[key] == value  # every metric flat by its key
    assert cfg["prune"] == 0.25 and cfg["w_bits"] == 8
    assert t.user_attrs["state_detail"] == "complete" and t.user_attrs["violations"] == {}
    folder = Path(t.user_attrs["artefact_dir"])
    assert folder == tmp_path / "study" / "trials" / "0"
    assert {p.name for p in folder.iterdir()} >= set(ARTEFACT_FILES.values())
    record = fakes.read_metrics(folder)
    assert record["config_hash"] == t.user_attrs["config_hash"] and record["values"] == t.values


def test_duplicate_config_is_served_from_cache(tmp_path: Path, fake_evaluator, fakes) -> None:
    study = _study(tmp_path)
    objective = _objective(tmp_path, fakes, fake_evaluator)
    for _ in range(2):
        study.enqueue_trial(POINT)
        run_one(study, study.ask(), objective)
    first, second = study.trials
    assert len(fake_evaluator.calls()) == 1  # trained once
    assert second.state == TrialState.COMPLETE and second.values == first.values
    assert second.user_attrs["cached_from"] == 0
    assert second.user_attrs["config_hash"] == first.user_attrs["config_hash"]
    folder = Path(second.user_attrs["artefact_dir"])
    assert folder.name == "1" and (folder / ARTEFACT_FILES["val_logits"]).is_file()
    assert fakes.read_metrics(folder)["cached_from"] == 0


def test_failed_evaluation_is_fail_with_reason(tmp_path: Path, fakes) -> None:
    evaluator = fakes.FakeEvaluator(tmp_path / "calls.log", fail=lambda c: c.w_bits == 8)
    study = _study(tmp_path)
    objective = _objective(tmp_path, fakes, evaluator)
    study.enqueue_trial(POINT)
    trial = study.ask()
    with pytest.raises(TrialFailed, match="NaN"):
        objective(trial)
    study.tell(trial, state=TrialState.FAIL)
    t = study.trials[0]
    assert t.state == TrialState.FAIL and t.user_attrs["state_detail"] == "failed"
    assert "NaN" in t.user_attrs["fail_reason"]
    assert fakes.read_metrics(Path(t.user_attrs["artefact_dir"]))["state"] == "failed"


def test_exception_in_evaluator_is_recorded(tmp_path: Path, fakes) -> None:
    def boom(config, artefact_dir=None, on_epoch=None):  # noqa: ANN001, ANN202
        raise MemoryError("CUDA out of memory")

    study = _study(tmp_path)
    exp = fakes.small_experiment()
    objective = make_objective(space_for(exp), boom, tmp_path / "study", exp.objectives, exp.constraints)
    run_one(study, study.ask(), objective)
    t = study.trials[0]
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "MemoryError: CUDA out of memory"


def test_infeasible_trial_is_complete_with_violated_constraint(tmp_path: Path, fakes) -> None:
    evaluator = fakes.FakeEvaluator(tmp_path / "calls.log", max_latency_ms=0.2)
    study = _study(tmp_path)
    objective = _objective(tmp_path, fakes, evaluator, constraints={"max_latency_ms": 0.2})
    study.enqueue_trial(POINT)  # latency ~0.26 ms > 0.2
    study.enqueue_trial({**POINT, "resolution": 0.5})  # ~0.07 ms: feasible
    run_one(study, study.ask(), objective)
    run_one(study, study.ask(), objective)
    bad, good = study.trials
    assert bad.state == TrialState.COMPLETE and bad.user_attrs["state_detail"] == "infeasible"
    assert bad.values[0] == 0.0 and "accuracy" not in bad.user_attrs
    assert bad.constraints["max_latency_ms"] > 0
    assert good.constraints["max_latency_ms"] <= 0 and good.user_attrs["state_detail"] == "complete"


def test_single_objective_prunes_on_epoch(tmp_path: Path, fakes) -> None:
    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:  # noqa: ANN001
            return True

    evaluator = fakes.FakeEvaluator(tmp_path / "calls.log", epochs=3)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", pruner=AlwaysPrune())
    objective = _objective(tmp_path, fakes, evaluator, objectives=[{"name": "accuracy", "direction": "maximize"}])
    run_one(study, study.ask(), objective)
    t = study.trials[0]
    assert t.state == TrialState.PRUNED and t.user_attrs["state_detail"] == "pruned"
    assert list(t.intermediate_values) == [0]


def test_constraint_values_sign_convention() -> None:
    bounds = {"max_latency_ms": 1.0, "min_accuracy": 0.9}
    vals = constraint_values(bounds, {"latency_ms": 1.5, "accuracy": 0.95}, {})
    assert vals == pytest.approx({"max_latency_ms": 0.5, "min_accuracy": -0.05})
    assert constraint_values(bounds, {"latency_ms": 0.5}, {"min_accuracy": 0.2})["min_accuracy"] == 0.2
