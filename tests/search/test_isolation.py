"""Trial isolation: a native crash or a runaway fine-tune fails one trial of a real study, not the study."""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import pytest
from optuna.trial import TrialState

from edgecompress.evaluators.evaluator import build_evaluator
from edgecompress.evaluators.isolated import IsolatedEvaluator, describe_exit
from edgecompress.search import run_search
from edgecompress.search.objective import MAX_DEATHS
from edgecompress.spaces import parse_experiment
from edgecompress.spaces.config import CompressionConfig
from edgecompress.study import load_study
from edgecompress.testing import faulty_evaluator

TINY = {
    "name": "isolation",
    "seed": 0,
    "dataset": {"name": "fashion_mnist", "train_subset": 600, "val_subset": 200, "test_subset": 200},
    "model": {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}},
    "base_training": {"epochs": 3, "batch_size": 32, "lr": 0.1},
    "finetune": {"epochs": 1, "batch_size": 64, "train_subset": 128},
    "space": {"prune": {"choices": [0.0, 0.5]}, "bits": {"choices": [32]}, "resolution": {"choices": [1.0]}},
    "budget": {"trials": 3, "sampler": "grid", "enqueue_uncompressed": False},
    # one latency window per measurement: the runaway test's 3 s trial budget is about killing, not timing
    "device": {"device": "cpu", "threads": 1, "min_repeats": 3, "max_seconds": 0.2, "batch_size": 4, "max_attempts": 1},
}


def test_segfault_in_one_trial_fails_that_trial_only() -> None:
    exp = parse_experiment(TINY)
    ev = IsolatedEvaluator(functools.partial(faulty_evaluator, exp, crash_on={"prune": 0.5}), max_seconds=600)
    summary = run_search(exp, "crash", trials=2, evaluator=ev)
    study = load_study("crash")
    by_prune = {t.params["prune"]: t for t in study.trials}
    crashed, fine = by_prune[0.5], by_prune[0.0]
    assert crashed.state == TrialState.FAIL
    assert crashed.user_attrs["fail_reason"] == "process died (signal 11, SIGSEGV)"
    assert fine.state == TrialState.COMPLETE and fine.values[0] > 0.2  # trained above chance (0.1)
    assert summary.stats.finished == 2 and not summary.interrupted


def test_runaway_trial_is_killed_after_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgecompress.evaluators.isolated as iso

    monkeypatch.setattr(iso, "KILL_GRACE_S", 0.0)
    exp = parse_experiment(TINY)
    ev = IsolatedEvaluator(functools.partial(faulty_evaluator, exp, hang_on={"prune": 0.5}), max_seconds=3)
    res = ev(CompressionConfig(prune=0.5))
    assert res.state == "failed" and res.fail_reason.startswith("timed out: killed after 3 s")
    assert "finetune.max_seconds=3" in res.fail_reason
    # a fresh worker takes the next trial; its budget is not what this tests (a first latency calibration in a
    # fresh CI session can take longer than 3 s), so it gets room
    ev.max_seconds = 120
    ok = ev(CompressionConfig(prune=0.0))
    assert ok.state == "complete" and ev.starts == 2, ok.fail_reason
    ev.close()


def test_finetune_past_max_seconds_fails_the_trial() -> None:
    cfg = dict(TINY, finetune={"epochs": 200, "batch_size": 16, "train_subset": 400, "max_seconds": 4})
    exp = parse_experiment(cfg)
    run_search(exp, "slow", trials=1)  # the real path: budget.isolation "process" by default
    (trial,) = load_study("slow").trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("timed out: training exceeded max_seconds=")


def test_config_that_died_twice_is_not_retried() -> None:
    exp = parse_experiment(dict(TINY, budget=dict(TINY["budget"], sampler="random", enqueue=[{"prune": 0.5}] * 3)))
    ev = IsolatedEvaluator(functools.partial(faulty_evaluator, exp, crash_on={"prune": 0.5}), max_seconds=600)
    run_search(exp, "twice", trials=3, evaluator=ev)
    trials = load_study("twice").trials
    reasons = [t.user_attrs["fail_reason"] for t in trials]
    assert reasons[:MAX_DEATHS] == ["process died (signal 11, SIGSEGV)"] * MAX_DEATHS
    assert reasons[2].startswith("not retried: this config's process died or timed out 2 times")
    assert ev.starts == 2  # the third trial never reached a worker


def test_describe_exit() -> None:
    assert describe_exit(-signal.SIGKILL) == "process died (signal 9, SIGKILL)"
    assert describe_exit(3) == "process died (exit code 3)"


def test_setup_error_is_one_line_with_its_type(tmp_path: Path) -> None:
    """A data error in the worker's set-up reaches the parent as the same DataError (one line, naming the
    folder), from prepare() before any trial as from the first call; the worker is gone either way."""
    from edgecompress.errors import DataError

    exp = parse_experiment(dict(TINY, dataset=dict(TINY["dataset"], root=str(tmp_path / "missing"))))
    ev = IsolatedEvaluator(functools.partial(build_evaluator, exp))
    for start in (ev.prepare, lambda: ev(CompressionConfig())):
        with pytest.raises(DataError, match=r"dataset.root .*missing: folder not found") as e:
            start()
        assert "\n" not in str(e.value) and ev._proc is None


def test_ctrl_c_stops_the_worker_and_leaves_the_study_resumable(tmp_path: Path) -> None:
    """SIGINT to the process group (as a terminal's Ctrl-C): the search returns interrupted at once, the
    running trial is re-queued, and no worker process is left behind."""
    import os
    import sqlite3
    import subprocess
    import sys
    import time
    from contextlib import closing

    from edgecompress.utils import runs_dir

    script = tmp_path / "run.py"
    cfg = dict(TINY, finetune={"epochs": 50, "batch_size": 16, "train_subset": 600})
    script.write_text(
        "from edgecompress.search import run_search\n"
        "from edgecompress.spaces import parse_experiment\n"
        "if __name__ == '__main__':\n"
        f"    s = run_search(parse_experiment({cfg!r}), 'ctrlc', trials=3)\n"
        "    print('interrupted', s.interrupted, flush=True)\n")
    err = tmp_path / "stderr.txt"
    db = runs_dir() / "ctrlc.db"
    with err.open("w") as err_file:
        proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True, text=True,
                                stdout=subprocess.PIPE, stderr=err_file,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # wait until a trial runs in the worker
            time.sleep(0.5)
            if proc.poll() is not None:
                pytest.fail(f"the search exited ({proc.returncode}) before a trial ran: {err.read_text()[-2000:]}")
            # read-only: opening the study through Optuna would create its tables while the search does
            try:
                with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                    states = [r[0] for r in con.execute("SELECT state FROM trials")]
            except sqlite3.Error:  # not created yet
                continue
            if "RUNNING" in states:
                break
        else:
            pytest.fail(f"the study did not start a trial in 300 s: {err.read_text()[-2000:]}")
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and "interrupted True" in out, (proc.returncode, out[-2000:])
    gone_by = time.time() + 60  # the whole group goes (multiprocessing's resource tracker exits last)
    while time.time() < gone_by:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        left = subprocess.run(["ps", "-o", "pid,cmd", "-g", str(proc.pid)], capture_output=True, text=True).stdout
        pytest.fail(f"processes left behind after Ctrl-C:\n{left}")
    trials = load_study("ctrlc").trials
    (stopped,) = [t for t in trials if t.user_attrs.get("state_detail") == "interrupted"]
    assert stopped.state == TrialState.FAIL
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == stopped.number]
    assert retry.state == TrialState.WAITING and retry.system_attrs["fixed_params"] == stopped.params
