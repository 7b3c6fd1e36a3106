"""search.ray_claims: Ray trials of one config running at once train it once (the board picks the owner, the
other waits and is served from the study once the driver wrote the owner); the board's bookkeeping alone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from edgecompress.search.ray_claims import ClaimBoard
from edgecompress.study import load_study


def test_board_owner_is_the_first_claimant_still_running() -> None:
    board = ClaimBoard()
    assert board.claim("h", "a") == "a" and board.claim("h", "b") == "a" and board.claim("h", "a") == "a"
    assert board.look("h") == ("a", None) and board.look("other") == (None, None)
    board.release("h", "a", complete=False)  # the owner failed: the next claimant owns the config
    assert board.look("h") == ("b", None)
    board.release("h", "b", complete=True)
    assert board.look("h") == (None, "b")


@pytest.mark.slow  # ~35 s on 2 loaded cores (Ray start-up)
def test_two_ray_trials_of_one_config_train_it_once(fakes, tmp_path: Path, runs: Path) -> None:
    import ray
    import ray.cloudpickle

    from edgecompress.search.ray_runner import run_ray_search

    ray.cloudpickle.register_pickle_by_value(sys.modules[fakes.FakeEvaluator.__module__])

    class Sleepy(fakes.FakeEvaluator):
        def __call__(self, config, artefact_dir=None, on_epoch=None):  # noqa: ANN001, ANN204
            import time

            time.sleep(self.delay)
            return super().__call__(config, artefact_dir, None)

    ev = Sleepy(tmp_path / "calls.log", delay=3.0, epochs=0)
    # the same config twice first: OptunaSearch hands both to Tune at once
    exp = fakes.small_experiment(budget={"sampler": "random", "enqueue_uncompressed": False,
                                         "enqueue": [{"prune": 0.5}, {"prune": 0.5}]})
    assert not ray.is_initialized()
    summary = run_ray_search(exp, "rayclaim", trials=2, max_concurrent=2, evaluator=ev)
    assert summary.stats.finished == 2
    trials = load_study("rayclaim").trials
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("fail_reason") for t in trials]
    assert len(ev.calls()) == 1  # trained once
    owner, waiter = sorted(trials, key=lambda t: "cached_from" in t.user_attrs)
    assert waiter.user_attrs["cached_from"] == owner.number == waiter.user_attrs["waited_for"]
    assert waiter.values == owner.values
