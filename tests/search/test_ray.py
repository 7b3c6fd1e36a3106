"""Ray Tune backend on local Ray (one Ray session for the module): every Tune trial lands in the Optuna
study once, and the stock OptunaSearch's in-memory mirror agrees with it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.search.objective import TrialFailed
from edgecompress.search.progress import is_counted
from edgecompress.study import load_study


@pytest.fixture(scope="module")
def ray_session():  # noqa: ANN201 - run_ray_search uses a running Ray and leaves it running
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def by_value(fakes) -> None:  # noqa: ANN001
    """Ray workers cannot import tests/search/conftest.py: ship its fakes by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[fakes.FakeEvaluator.__module__])


def test_ray_backend_writes_trials_into_the_study(fakes, tmp_path: Path, runs: Path, ray_session,
                                                  by_value) -> None:
    from edgecompress.search.ray_runner import run_ray_search

    spans = tmp_path / "spans.jsonl"

    class Timed(fakes.FakeEvaluator):
        def __call__(self, config, artefact_dir=None, on_epoch=None):  # noqa: ANN001, ANN204
            start = time.time()
            written = []

            def record() -> None:
                if not written:  # ASHA may stop the trial inside on_epoch: record the span before that
                    written.append(1)
                    with open(spans, "a") as f:
                        f.write(json.dumps([start, time.time()]) + "\n")

            def epoch_cb(epoch, acc):  # noqa: ANN001, ANN202
                record()
                if on_epoch is not None:
                    on_epoch(epoch, acc)

            out = super().__call__(config, artefact_dir, epoch_cb)
            record()
            return out

    # continuous prune ratio: no duplicate configs, so all 4 trials really run (none served from the cache)
    exp = fakes.small_experiment(budget={"sampler": "random"}, space={"prune": {"low": 0.0, "high": 0.7}})
    # 4 s per trial: long enough that the two concurrent workers overlap even when their start-up is slow
    evaluator = Timed(tmp_path / "calls.log", delay=4.0, epochs=1)
    summary = run_ray_search(exp, "ray", trials=4, max_concurrent=2, evaluator=evaluator, seed=0)
    study = load_study("ray")
    reasons = [t.user_attrs.get("fail_reason") for t in study.trials if t.state == TrialState.FAIL]
    assert not reasons, reasons
    assert summary.backend == "ray" and summary.stats.finished == 4
    assert len(study.trials) == 4 and all(is_counted(t) for t in study.trials)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete, "ASHA may stop some trials, not all"
    for t in complete:
        assert len(t.values) == 2 and t.user_attrs["state_detail"] in ("complete", "infeasible")
        assert t.user_attrs["config"]["prune"] == t.params["prune"] and "config_hash" in t.user_attrs
        folder = Path(t.user_attrs["artefact_dir"])
        assert folder == runs / "ray" / "trials" / str(t.number)
        assert all((folder / n).is_file() for n in ARTEFACT_FILES.values())
        assert t.params == {k: t.params[k] for k in ("prune", "depth", "w_bits", "resolution")}
    assert study.metric_names[0] == "accuracy" and study.user_attrs["backend"] == "ray"
    intervals = [json.loads(line) for line in spans.read_text().splitlines()]
    overlap = max(sum(s <= t0 < e for s, e in intervals) for t0, _ in intervals)
    assert overlap == 2, (intervals, [(t.params, t.user_attrs.get("cached_from")) for t in study.trials])


# ---- the trainable's reports (no Ray session: tune.report / get_context replaced) ---------------------
def _run_trainable(fakes, tmp_path: Path, monkeypatch, evaluator, params: dict) -> tuple[list[dict], object]:  # noqa: ANN001
    from ray import tune

    from edgecompress.search.ray_runner import _trainable_factory
    from edgecompress.search.study_setup import space_for

    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: reports.append(dict(metrics)))
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t0"))
    exp = fakes.small_experiment()
    space = space_for(exp)
    url = f"sqlite:///{tmp_path}/none.db"  # no study there: no cache
    trainable = _trainable_factory(exp, space, url, "unit", tmp_path / "study", evaluator, None)
    error = None
    try:
        trainable(params)
    except Exception as e:  # noqa: BLE001
        error = e
    return reports, (exp, space, error)


PARAMS = {"prune": 0.25, "depth": 1.0, "w_bits": 8, "resolution": 1.0}


def test_final_report_carries_the_objectives_flat(fakes, tmp_path: Path, monkeypatch) -> None:
    reports, (exp, space, error) = _run_trainable(fakes, tmp_path, monkeypatch,
                                                  fakes.FakeEvaluator(tmp_path / "calls.log", epochs=2), PARAMS)
    assert error is None
    metrics = fakes.fake_metrics(space.from_params(PARAMS))
    *epochs, final = reports
    assert [set(r) for r in epochs] == [{"val_accuracy", "epoch"}] * 2  # per epoch: ASHA's metric only
    assert [o.name for o in exp.objectives] == ["accuracy", "latency_ms"]
    assert final["accuracy"] == metrics["accuracy"] and final["latency_ms"] == metrics["latency_ms"]
    assert final["val_accuracy"] == metrics["accuracy"] and final["ec_result"]["state"] == "complete"


def test_failed_evaluation_is_reported_then_raised(fakes, tmp_path: Path, monkeypatch) -> None:
    class Raising(fakes.FakeEvaluator):
        def __call__(self, config, artefact_dir=None, on_epoch=None):  # noqa: ANN001, ANN204
            raise RuntimeError("CUDA out of memory")

    reports, (_, _, error) = _run_trainable(fakes, tmp_path, monkeypatch, Raising(tmp_path / "calls.log"), PARAMS)
    (final,) = reports
    # no objective values (nothing for OptunaSearch to tell COMPLETE) and no val_accuracy (ASHA leaves it)
    assert not {"accuracy", "latency_ms", "val_accuracy"} & set(final)
    assert final["ec_result"]["state"] == "failed"
    assert final["ec_result"]["fail_reason"] == "RuntimeError: CUDA out of memory"
    assert isinstance(error, TrialFailed) and str(error) == "RuntimeError: CUDA out of memory"


# ---- through Ray: errored and cached trials, the mirror study --------------------------------------
MIRRORS: list[optuna.storages.InMemoryStorage] = []


class _Crash(BaseException):
    """Not caught by the trainable's `except Exception`."""


class _Mirror(optuna.storages.InMemoryStorage):
    """The searcher's in-memory study, kept for the test (module level: Tune pickles the searcher)."""

    def __init__(self) -> None:
        super().__init__()
        MIRRORS.append(self)


def test_each_outcome_in_the_study_and_the_mirror(fakes, tmp_path: Path, runs: Path, monkeypatch, caplog,
                                                  ray_session, by_value) -> None:
    """Enqueued, run one at a time (so the order and ASHA's decisions are fixed): a complete config, one
    whose evaluator raises, one whose trainable dies, the first again (served from the cache), and a worse
    one that ASHA stops after its first epoch (below the median of rung 1)."""
    from edgecompress.search import ray_runner

    MIRRORS.clear()
    monkeypatch.setattr(ray_runner.optuna.storages, "InMemoryStorage", _Mirror)

    class RaisingAbove(fakes.FakeEvaluator):
        def __call__(self, config, artefact_dir=None, on_epoch=None):  # noqa: ANN001, ANN204
            if config.prune > 0.62:  # not an Exception: the trainable itself dies, before its final report
                raise _Crash(f"crash at prune {config.prune}")
            if config.prune > 0.5:
                raise ValueError(f"boom at prune {config.prune}")
            return super().__call__(config, artefact_dir, on_epoch)

    exp = fakes.small_experiment(
        space={"prune": {"low": 0.0, "high": 0.7}},
        budget={"sampler": "random", "enqueue_uncompressed": False,
                "enqueue": [{"prune": 0.1}, {"prune": 0.6}, {"prune": 0.65}, {"prune": 0.1}, {"prune": 0.5}]})
    summary = ray_runner.run_ray_search(exp, "rayfail", trials=5, max_concurrent=1, seed=0,
                                        evaluator=RaisingAbove(tmp_path / "calls.log", epochs=1))
    study = load_study("rayfail")
    assert summary.stats.finished == 5 and len(study.trials) == 5  # each Tune trial exactly once
    by_prune = {}
    for t in study.trials:
        by_prune.setdefault(t.params["prune"], []).append(t)
    (failed,) = by_prune[0.6]
    assert failed.state == TrialState.FAIL and failed.user_attrs["state_detail"] == "failed"
    assert failed.user_attrs["fail_reason"] == "ValueError: boom at prune 0.6"
    assert json.loads((Path(failed.user_attrs["artefact_dir"]) / ARTEFACT_FILES["metrics"]).read_text())[
        "fail_reason"] == "ValueError: boom at prune 0.6"
    (crashed,) = by_prune[0.65]  # its reason comes from the ResultGrid's Result.error
    assert crashed.state == TrialState.FAIL and crashed.user_attrs["state_detail"] == "failed"
    assert crashed.user_attrs["fail_reason"].endswith("_Crash: crash at prune 0.65"), crashed.user_attrs
    assert "\n" not in crashed.user_attrs["fail_reason"]
    first, cached = sorted(by_prune[0.1], key=lambda t: t.number)
    metrics = fakes.fake_metrics(ray_runner.space_for(exp).from_params(first.params))
    assert first.state == cached.state == TrialState.COMPLETE
    assert first.values == cached.values == [metrics["accuracy"], metrics["latency_ms"]]
    assert cached.user_attrs["cached_from"] == first.number and "cached_from" not in first.user_attrs
    (stopped,) = by_prune[0.5]
    assert stopped.state == TrialState.PRUNED and stopped.user_attrs["state_detail"] == "pruned"
    assert stopped.intermediate_values == {0: 0.8575}  # its one epoch, below the other two at rung 1
    assert len(RaisingAbove(tmp_path / "calls.log").calls()) == 2  # the repeat came from the cache

    (storage,) = MIRRORS
    mirror = optuna.load_study(study_name="rayfail", storage=storage)
    # the stock OptunaSearch: COMPLETE with the reported values, FAIL for the errored ones; the ASHA-stopped
    # trial's last result has no objectives, Optuna refuses its COMPLETE with None: it stays RUNNING
    assert sorted((t.params["prune"], t.state.name, t.values) for t in mirror.trials) == sorted(
        (t.params["prune"], "RUNNING" if t.state == TrialState.PRUNED else t.state.name, t.values)
        for t in study.trials)
    assert "could not be cast to float" not in caplog.text  # that refusal is not logged
