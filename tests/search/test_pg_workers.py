"""Independent search workers on one PostgreSQL study, each a separate process in its own working folder
(no shared runs folder; the artefact store is the one folder they share): the total is reached with no
config trained twice, the real evaluator trains the base model once, a SIGKILLed worker's trial is failed
by the heartbeat and re-run elsewhere, a database restart is waited out, a raising worker stops no one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

import edgecompress
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.search.progress import is_counted
from edgecompress.study import load_study

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("pg_worker.py")
REPO = Path(edgecompress.__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    """A worker's environment: this checkout's package, no shared runs folder (each uses ./runs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("EDGECOMPRESS_RUNS", "EDGECOMPRESS_ARTEFACTS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def spawn(folder: Path, env: dict[str, str] | None = None, **args: object) -> subprocess.Popen:
    """Start pg_worker.py in its own working folder `folder` (created) with `args` as its JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    args.setdefault("log", str(folder / "calls.log"))
    return subprocess.Popen([sys.executable, str(WORKER), json.dumps(args)], cwd=folder, env=env or _env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> None:
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        assert p.returncode == 0, err[-2000:]


def wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _trials(name: str, url: str) -> list:
    try:
        return load_study(name, storage=url).get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - not created yet
        return []


def test_independent_workers_reach_the_total_with_no_config_twice(pg_server, tmp_path: Path) -> None:
    name, store = f"w-{uuid.uuid4().hex[:6]}", tmp_path / "store"
    procs = [spawn(tmp_path / f"worker{i}", study=name, url=pg_server.url, trials=9, delay=0.5,
                   artefacts=str(store)) for i in range(3)]
    finish(procs)
    trials = load_study(name, storage=pg_server.url).trials
    assert len(trials) == 9 and all(t.state == TrialState.COMPLETE for t in trials)  # the total, not more
    logs = [tmp_path / f"worker{i}" / "calls.log" for i in range(3)]  # a worker served only from the cache has none
    calls = [h for log in logs if log.is_file() for h in log.read_text().split()]
    assert len(calls) == 9 and len(set(calls)) == 9  # every config evaluated once
    assert len({t.system_attrs["ec:pid"] for t in trials}) >= 2
    for t in trials:
        folder = Path(t.user_attrs["artefact_dir"])
        assert folder.parent.parent == store / name and (folder / ARTEFACT_FILES["val_logits"]).is_file()
    assert not any((tmp_path / f"worker{i}" / "runs" / name).exists() for i in range(3))  # nothing local


def test_workers_drawing_more_trials_than_configs_train_each_config_once(pg_server, tmp_path: Path) -> None:
    """3 workers, 10 trials, a 4-config space: configs drawn at once by two workers are claimed by one (the
    other waits for it, search.claim); every config is trained exactly once, the rest served from the cache."""
    name, store = f"grid-{uuid.uuid4().hex[:6]}", tmp_path / "store"
    procs = [spawn(tmp_path / f"worker{i}", study=name, url=pg_server.url, trials=10, delay=1.0,
                   artefacts=str(store), small_grid=True) for i in range(3)]
    finish(procs)
    trials = load_study(name, storage=pg_server.url).trials
    assert len(trials) == 10 and all(t.state == TrialState.COMPLETE for t in trials)
    trained = [t for t in trials if "cached_from" not in t.user_attrs]
    logs = [tmp_path / f"worker{i}" / "calls.log" for i in range(3)]  # a worker served only from the cache has none
    calls = [h for log in logs if log.is_file() for h in log.read_text().split()]
    assert len(calls) == len(set(calls)) == len(trained)  # every evaluation trained a new config
    assert {t.user_attrs["config_hash"] for t in trained} == {t.user_attrs["config_hash"] for t in trials}
    assert len(trained) <= 4
    for t in trials:
        assert (Path(t.user_attrs["artefact_dir"]) / ARTEFACT_FILES["model"]).is_file()
    for t in trials:
        if "waited_for" in t.user_attrs:  # a waiter served from the trial it waited for
            assert t.user_attrs["cached_from"] == t.user_attrs["waited_for"]


def cli(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "edgecompress.cli", *args], cwd=folder, env=env or _env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_workers_with_the_real_evaluator_train_the_base_once(pg_server, tmp_path: Path, fmnist_dir,
                                                                  tiny_pipeline) -> None:
    name, store = f"real-{uuid.uuid4().hex[:6]}", tmp_path / "store"
    cfg = tmp_path / "tiny.yaml"
    # tests/conftest.py's TINY_PIPELINE on the grid (8 points): workers never draw the same config
    cfg.write_text(yaml.safe_dump(tiny_pipeline(name="tiny-workers", budget={"trials": 4, "sampler": "grid"})))
    cmd = ["search", str(cfg), "--study", name, "--storage", pg_server.url, "--artefacts", str(store),
           "--trials", "4", "--no-progress"]
    finish([cli(tmp_path / f"worker{i}", *cmd) for i in range(2)], timeout=480)
    trials = load_study(name, storage=pg_server.url).trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["config_hash"] for t in trials}) == 4  # no config trained twice
    bases = sorted((store / "cache").glob("base-*"))
    assert len(bases) == 1 and not list(tmp_path.glob("worker*/runs/cache/base-*"))  # one base, in the store
    assert {t.user_attrs["base_dir"] for t in trials} == {str(bases[0])}
    trainers = {t.system_attrs["ec:pid"] for t in trials if not t.user_attrs["base_from_cache"]}
    assert len(trainers) <= 1  # only the worker that trained it used it unloaded; the other loaded it
    for t in trials:
        folder = Path(t.user_attrs["artefact_dir"])
        assert folder.parent.parent == store / name
        assert all((folder / ARTEFACT_FILES[k]).is_file() for k in ("model", "val_logits", "test_logits"))
    best = max(trials, key=lambda t: t.values[0])
    exporter = cli(tmp_path / "export", "export", name, "--storage", pg_server.url, "--trial", str(best.number),
                   "--format", "yaml,onnx", "-o", str(tmp_path / "exported"))
    finish([exporter])
    assert (tmp_path / "exported" / "model.onnx").is_file()


def _owner(trials: list, pid: int) -> list:
    return [t for t in trials if t.system_attrs.get("ec:pid") == pid]


def test_sigkilled_worker_trial_failed_by_heartbeat_and_rerun(pg_server, tmp_path: Path) -> None:
    """Workers that stand for two machines (EDGECOMPRESS_HOSTNAME): the killed worker's process cannot be
    checked by pid from the other, so only the heartbeat (grace 3 s here) finds its trial."""
    name, grace = f"kill-{uuid.uuid4().hex[:6]}", 3
    common = dict(study=name, url=pg_server.url, trials=5, artefacts=str(tmp_path / "store"))
    slow = spawn(tmp_path / "a", env=_env(EDGECOMPRESS_HOSTNAME="host-a", EDGECOMPRESS_GRACE_PERIOD_S=str(grace)),
                 delay=60, **common)
    try:
        wait_for(lambda: any(t.state == TrialState.RUNNING for t in _owner(_trials(name, pg_server.url), slow.pid)),
                 120, "worker a's first trial")
        fast = spawn(tmp_path / "b", env=_env(EDGECOMPRESS_HOSTNAME="host-b", EDGECOMPRESS_GRACE_PERIOD_S=str(grace)),
                     delay=1.0, **common)
        wait_for(lambda: len(_owner(_trials(name, pg_server.url), fast.pid)) >= 1, 120, "worker b's first trial")
    finally:
        slow.send_signal(signal.SIGKILL)
        slow.wait()
    killed_at = time.time()
    finish([fast])
    trials = load_study(name, storage=pg_server.url).trials
    (dead,) = _owner(trials, slow.pid)
    assert dead.state == TrialState.FAIL and not is_counted(dead)
    # found stale within the grace period (+ one heartbeat, + b's trial in progress when it went stale)
    assert dead.datetime_complete.timestamp() - killed_at <= grace + 1 + 1.0 + 3
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.params == dead.params and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["ec:pid"] == fast.pid
    assert sum(is_counted(t) for t in trials) == 5


def test_database_restart_mid_study_is_waited_out(own_pg_server, tmp_path: Path) -> None:
    name = f"restart-{uuid.uuid4().hex[:6]}"
    url = own_pg_server.url
    procs = [spawn(tmp_path / f"w{i}", study=name, url=url, trials=10, delay=1.0, artefacts=str(tmp_path / "store"))
             for i in range(2)]
    try:
        wait_for(lambda: sum(t.state == TrialState.COMPLETE for t in _trials(name, url)) >= 3, 120,
                 "3 complete trials")
        before = {t.number: (t.values, t.datetime_complete) for t in _trials(name, url)
                  if t.state == TrialState.COMPLETE}
        own_pg_server.stop()
        time.sleep(3.0)  # workers hit the outage: their storage calls retry with backoff
        own_pg_server.start()
    except BaseException:
        for p in procs:
            p.kill()
        raise
    finish(procs)
    trials = load_study(name, storage=url).trials
    assert sum(is_counted(t) for t in trials) == 10
    assert all(t.state == TrialState.COMPLETE for t in trials)  # no trial lost to the outage
    for n, v in before.items():
        assert (trials[n].values, trials[n].datetime_complete) == v


def test_a_raising_worker_does_not_stop_the_others(pg_server, tmp_path: Path) -> None:
    name = f"raise-{uuid.uuid4().hex[:6]}"
    common = dict(study=name, url=pg_server.url, trials=8, delay=0.4, artefacts=str(tmp_path / "store"))
    bad = spawn(tmp_path / "bad", **{**common, "raise": "all"})
    good = spawn(tmp_path / "good", **common)
    finish([bad, good])
    trials = load_study(name, storage=pg_server.url).trials
    assert sum(is_counted(t) for t in trials) == 8
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and {t.system_attrs["ec:pid"] for t in failed} == {bad.pid}
    assert all(t.user_attrs["fail_reason"] == "RuntimeError: boom on this worker" for t in failed)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done and {t.system_attrs["ec:pid"] for t in done} == {good.pid}
    assert Counter(t.state for t in trials)[TrialState.RUNNING] == 0
