"""search.claim: two trials that draw one config at the same moment train it once (the other waits and is
served from the cache); a waiter trains itself when the owner fails, when the heartbeat fails a dead owner,
and (bounded, with a note) when nothing fails an owner left RUNNING."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.search import run_search
from edgecompress.search.objective import make_objective
from edgecompress.search.optuna_runner import run_one
from edgecompress.search.recovery import recover_dead_trials
from edgecompress.search.study_setup import space_for
from edgecompress.study import load_study
from edgecompress.study.storage import default_storage_url, make_storage

POINT = {"prune": 0.25, "depth": 1.0, "w_bits": 8, "resolution": 1.0}


def _journal(tmp_path: Path) -> tuple[str, list[optuna.Study]]:
    """One journal-file study, loaded twice (as two worker processes would), with POINT enqueued twice."""
    path = str(tmp_path / "s.journal")
    optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(path)),
                        directions=["maximize", "minimize"])
    studies = [optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(path))) for _ in range(2)]
    for _ in range(2):
        studies[0].enqueue_trial(POINT)
    return path, studies


def _objective(tmp_path: Path, fakes, evaluator, **kw):  # noqa: ANN001, ANN003
    exp = fakes.small_experiment()
    return make_objective(space_for(exp), evaluator, tmp_path / "study", exp.objectives, exp.constraints, **kw)


def _run_both(studies: list[optuna.Study], objectives: list, second_first: bool = False) -> list[float]:  # noqa: ANN001
    """Ask one trial on each study (both RUNNING before either claims), then run them in two threads;
    `second_first`: trial 1 starts 0.3 s before trial 0 (it claims before trial 0 recorded its hash)."""
    trials = [s.ask() for s in studies]
    ends: list[float] = [0.0, 0.0]

    def go(i: int) -> None:
        if second_first and i == 0:
            time.sleep(0.3)
        run_one(studies[i], trials[i], objectives[i])
        ends[i] = time.monotonic()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return ends


def test_same_config_at_once_is_trained_once_and_the_other_waits(tmp_path: Path, fakes) -> None:
    _, studies = _journal(tmp_path)
    ev = fakes.FakeEvaluator(tmp_path / "calls.log", delay=1.0)
    objectives = [_objective(tmp_path, fakes, ev, claim_wait_s=30) for _ in range(2)]
    _run_both(studies, objectives, second_first=True)
    owner, waiter = studies[0].trials
    assert len(ev.calls()) == 1  # trained once
    assert owner.state == waiter.state == TrialState.COMPLETE and waiter.values == owner.values
    assert "cached_from" not in owner.user_attrs and "waited_for" not in owner.user_attrs
    assert waiter.user_attrs["cached_from"] == 0 and waiter.user_attrs["waited_for"] == 0
    assert "claim_note" not in waiter.user_attrs
    assert (Path(waiter.user_attrs["artefact_dir"]) / ARTEFACT_FILES["model"]).is_file()
    assert waiter.datetime_complete >= owner.datetime_complete


class FailsFirst:
    """The search tests' FakeEvaluator, but its first evaluation fails (after `delay`, like a diverged run)."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner, self.n, self.lock = inner, 0, threading.Lock()

    def __call__(self, config, artefact_dir=None, on_epoch=None):  # noqa: ANN001, ANN204
        with self.lock:
            self.n += 1
            first = self.n == 1
        if first:
            time.sleep(1.0)
            from edgecompress.evaluators.result import EvalResult

            return EvalResult(config=config, state="failed", fail_reason="TrainingDivergedError: loss is NaN")
        return self.inner(config, artefact_dir, on_epoch)


def test_waiter_trains_itself_when_the_owner_fails(tmp_path: Path, fakes) -> None:
    _, studies = _journal(tmp_path)
    inner = fakes.FakeEvaluator(tmp_path / "calls.log")
    ev = FailsFirst(inner)
    objectives = [_objective(tmp_path, fakes, ev, claim_wait_s=30) for _ in range(2)]
    _run_both(studies, objectives)
    owner, waiter = studies[0].trials
    assert owner.state == TrialState.FAIL and "NaN" in owner.user_attrs["fail_reason"]
    assert waiter.state == TrialState.COMPLETE and len(inner.calls()) == 1  # the waiter trained it
    assert waiter.user_attrs["waited_for"] == 0 and "cached_from" not in waiter.user_attrs
    assert "trial 0" in waiter.user_attrs["claim_note"]


def test_owner_left_running_without_heartbeat_bounds_the_wait(tmp_path: Path, fakes) -> None:
    """Trial 0 claimed the config and its process vanished on another machine (journal: no heartbeat)."""
    _, studies = _journal(tmp_path)
    ghost = studies[0].ask()
    ghost.set_user_attr("config_hash", space_for(fakes.small_experiment()).from_params(POINT).config_hash())
    ev = fakes.FakeEvaluator(tmp_path / "calls.log")
    started = time.monotonic()
    run_one(studies[1], studies[1].ask(), _objective(tmp_path, fakes, ev, claim_wait_s=1.5))
    waiter = studies[1].trials[1]
    assert 1.5 <= time.monotonic() - started < 10
    assert waiter.state == TrialState.COMPLETE and len(ev.calls()) == 1
    assert waiter.user_attrs["waited_for"] == 0 and "the limit" in waiter.user_attrs["claim_note"]


def test_stale_owner_is_failed_by_the_heartbeat_and_the_waiter_trains(tmp_path: Path, fakes) -> None:
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    storages = [RDBStorage(url, heartbeat_interval=1, grace_period=2) for _ in range(2)]
    optuna.create_study(study_name="hb", storage=storages[0], directions=["maximize", "minimize"])
    studies = [optuna.load_study(study_name="hb", storage=s) for s in storages]
    for _ in range(2):
        studies[0].enqueue_trial(POINT)
    ghost = studies[0].ask()  # its worker records one heartbeat and dies
    ghost.set_user_attr("config_hash", space_for(fakes.small_experiment()).from_params(POINT).config_hash())
    storages[0].record_heartbeat(ghost._trial_id)
    ev = fakes.FakeEvaluator(tmp_path / "calls.log")
    objective = _objective(tmp_path, fakes, ev, claim_wait_s=60,
                           refresh=lambda: recover_dead_trials(studies[1], storages[1]))
    started = time.monotonic()
    run_one(studies[1], studies[1].ask(), objective, storages[1])
    took = time.monotonic() - started
    trials = studies[1].trials
    assert trials[0].state == TrialState.FAIL and took < 20  # failed within the grace period, not the limit
    assert trials[1].state == TrialState.COMPLETE and trials[1].user_attrs["waited_for"] == 0
    assert len(ev.calls()) == 1 and "cached_from" not in trials[1].user_attrs


def test_two_workers_given_each_config_three_times_train_each_once(tmp_path: Path, fakes) -> None:
    """More trials than configs, queued so that both workers start the same config at the same moment:
    every config is trained by one worker, every other trial waits for it and is served from the cache."""
    ev = fakes.FakeEvaluator(tmp_path / "w.log", delay=0.6)
    exp = fakes.small_experiment(budget={"sampler": "random", "enqueue_uncompressed": False})
    study = optuna.create_study(study_name="claims", storage=make_storage(default_storage_url("claims", 2)),
                                directions=["maximize", "minimize"])
    for point in (POINT, POINT, POINT, {**POINT, "prune": 0.5}, {**POINT, "prune": 0.5}, {**POINT, "prune": 0.5}):
        study.enqueue_trial(point)
    run_search(exp, "claims", trials=6, workers=2, evaluator=ev)
    trials = load_study("claims").trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    trained = [t for t in trials if "cached_from" not in t.user_attrs]
    assert len(ev.calls()) == len(trained) == 2  # no config trained twice
    assert len({t.user_attrs["config_hash"] for t in trained}) == 2
    assert any("waited_for" in t.user_attrs for t in trials)  # the workers did collide
    assert len({t.system_attrs["ec:pid"] for t in trials}) == 2


def test_a_lower_trial_that_never_records_its_hash_blocks_only_briefly(tmp_path: Path, fakes) -> None:
    """Trial 0 was asked and its worker died before recording its config: trial 1 waits settle_s for it
    (it might be a claimant), then owns its config; it waited for no one."""
    from edgecompress.search.claim import claim_config

    _, studies = _journal(tmp_path)
    studies[0].ask()  # RUNNING, no config_hash ever
    trial = studies[1].ask()
    trial.set_user_attr("config_hash", "abc")
    started = time.monotonic()
    claim = claim_config(studies[1], trial.number, "abc", wait_s=30, poll_s=0.1, settle_s=1.0)
    assert 1.0 <= time.monotonic() - started < 5
    assert claim.source is None and claim.waited_for is None and claim.note is None


def test_finished_trials_without_a_config_hash_are_ignored(tmp_path: Path, fakes) -> None:
    """A study with trials that carry no config hash (added by hand, an older edgecompress) still claims."""
    from edgecompress.search.claim import claim_config

    _, studies = _journal(tmp_path)
    studies[0].add_trial(optuna.trial.create_trial(values=[0.5, 1.0]))  # COMPLETE, no user attrs
    trial = studies[1].ask()
    trial.set_user_attr("config_hash", "abc")
    claim = claim_config(studies[1], trial.number, "abc", wait_s=5, poll_s=0.1)
    assert claim.source is None and claim.waited_for is None
