"""run_search: totals, resume, SIGKILL recovery, failures, seeds, samplers, workers, Ctrl-C."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from edgecompress.errors import ConfigError
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.search import run_search, space_for
from edgecompress.search.progress import is_counted
from edgecompress.search.samplers import make_sampler, resolve_sampler_name
from edgecompress.study import load_study


def _hashes(study: optuna.Study) -> list[str]:
    return [t.user_attrs["config_hash"] for t in sorted(study.trials, key=lambda t: t.number)]


def test_six_trials_end_to_end(fakes, fake_evaluator, runs: Path) -> None:
    exp = fakes.small_experiment(constraints={"max_latency_ms": 5.0})
    seen = []
    summary = run_search(exp, "e2e", trials=6, evaluator=fake_evaluator, progress=seen.append)
    study = load_study("e2e")
    assert summary.storage == f"sqlite:///{runs / 'e2e.db'}" and summary.stats.finished == 6
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    assert study.metric_names == ["accuracy", "latency_ms"]  # Optuna's public names (dashboard, plots)
    assert "objectives" not in study.user_attrs
    assert study.user_attrs["experiment"] == exp.to_dict()
    assert study.user_attrs["constraints"]["max_latency_ms"] == 5.0
    first = study.trials[0]
    assert first.user_attrs["enqueued"] and first.user_attrs["config"]["prune"] == 0.0  # uncompressed first
    for t in study.trials:
        assert len(t.values) == 2 and t.constraints["max_latency_ms"] < 0
        folder = Path(t.user_attrs["artefact_dir"])
        assert folder == runs / "e2e" / "trials" / str(t.number)
        assert all((folder / name).is_file() for name in ARTEFACT_FILES.values())
    assert seen[-1].finished == 6 and summary.front and len(summary.front) == len(seen[-1].front)


def test_trials_is_the_total_and_resume_keeps_finished_trials(fakes, fake_evaluator) -> None:
    exp = fakes.small_experiment()
    run_search(exp, "res", trials=3, evaluator=fake_evaluator)
    before = {t.number: (t.values, t.datetime_complete) for t in load_study("res").trials}
    summary = run_search(exp, "res", trials=5, evaluator=fake_evaluator)
    study = load_study("res")
    assert summary.new_trials == 2 and len(study.trials) == 5
    assert all((study.trials[n].values, study.trials[n].datetime_complete) == v for n, v in before.items())
    assert sum(bool(t.user_attrs.get("enqueued")) for t in study.trials) == 1  # enqueued on the fresh study only
    assert run_search(exp, "res", trials=5, evaluator=fake_evaluator).new_trials == 0


def test_failing_trial_is_recorded_and_study_completes(fakes, tmp_path: Path) -> None:
    evaluator = fakes.FakeEvaluator(tmp_path / "c.log", fail=lambda c: c.resolution == 0.5)
    exp = fakes.small_experiment(budget={"sampler": "random"})
    summary = run_search(exp, "fail", trials=8, evaluator=evaluator, seed=1)
    study = load_study("fail")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed, "the seed must sample resolution 0.5 at least once"
    assert all("NaN" in t.user_attrs["fail_reason"] for t in failed)
    assert sum(is_counted(t) for t in study.trials) == 8 == summary.stats.finished
    assert summary.stats.failed == len(failed)
    assert all(t.user_attrs["config"]["resolution"] == 1.0 for t in study.trials if t.state == TrialState.COMPLETE)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_same_seed_same_configs(fakes, tmp_path: Path, sampler: str) -> None:
    exp = fakes.small_experiment(budget={"sampler": sampler, "enqueue_uncompressed": False})
    seqs = []
    for i, seed in enumerate((7, 7, 8)):
        ev = fakes.FakeEvaluator(tmp_path / f"{i}.log")
        run_search(exp, f"seed{i}", trials=6, evaluator=ev, seed=seed)
        seqs.append(_hashes(load_study(f"seed{i}")))
    assert seqs[0] == seqs[1]
    assert seqs[0] != seqs[2]


def test_auto_sampler_rule_and_nsga2_warning(fakes) -> None:
    space = space_for(fakes.small_experiment())  # 16 discrete points
    assert resolve_sampler_name("auto", 2, 20, 10, space) == "grid"
    big = space_for(fakes.small_experiment(space={"prune": {"low": 0.0, "high": 0.7}}))
    assert resolve_sampler_name("auto", 2, 30, 10, big) == "tpe"
    assert resolve_sampler_name("auto", 2, 100, 10, big) == "tpe"  # NSGA-II only from 30 populations
    assert resolve_sampler_name("auto", 2, 299, 10, big) == "tpe"
    assert resolve_sampler_name("auto", 2, 300, 10, big) == "nsga2"
    assert resolve_sampler_name("auto", 1, 500, 10, big) == "tpe"
    _, warns = make_sampler("nsga2", 0, 15, 10, big)
    assert warns and "2 populations" in warns[0]
    with pytest.raises(ConfigError, match="`sampler` 'bogus'"):
        resolve_sampler_name("bogus", 2, 10, 10, space)


def test_grid_sampler_stops_at_space_size(fakes, fake_evaluator) -> None:
    exp = fakes.small_experiment(space={"prune": {"choices": [0.0, 0.5]}, "resolution": {"choices": [1.0]}})
    summary = run_search(exp, "grid", trials=10, sampler="grid", evaluator=fake_evaluator)
    study = load_study("grid")
    assert summary.target == 4 and summary.warnings
    assert len({t.user_attrs["config_hash"] for t in study.trials}) == 4


def test_resumed_grid_visits_every_point_once(fakes, fake_evaluator) -> None:
    """A grid study stopped and resumed must continue the same grid (its order depends on the seed)."""
    exp = fakes.small_experiment()
    run_search(exp, "grid-resume", trials=5, sampler="grid", evaluator=fake_evaluator, seed=3)
    run_search(exp, "grid-resume", trials=9, sampler="grid", evaluator=fake_evaluator, seed=3)
    run_search(exp, "grid-resume", trials=16, sampler="grid", evaluator=fake_evaluator, seed=3)
    study = load_study("grid-resume")
    hashes = [t.user_attrs["config_hash"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(hashes) == 16 and len(set(hashes)) == 16  # all 16 points, none twice


def test_ctrl_c_leaves_study_resumable(fakes, tmp_path: Path) -> None:
    class Interrupting(fakes.FakeEvaluator):
        def __call__(self, config, artefact_dir=None, on_epoch=None):  # noqa: ANN001, ANN204
            if len(self.calls()) == 2:
                with open(self.log, "a") as f:
                    f.write("interrupt\n")
                raise KeyboardInterrupt
            return super().__call__(config, artefact_dir, on_epoch)

    exp = fakes.small_experiment(budget={"sampler": "random"})
    summary = run_search(exp, "ctrlc", trials=5, evaluator=Interrupting(tmp_path / "c.log"))
    assert summary.interrupted and summary.stats.finished == 2
    study = load_study("ctrlc")
    stopped = next(t for t in study.trials if t.user_attrs.get("state_detail") == "interrupted")
    assert stopped.state == TrialState.FAIL
    run_search(exp, "ctrlc", trials=5, evaluator=fakes.FakeEvaluator(tmp_path / "d.log"))
    study = load_study("ctrlc")
    assert sum(is_counted(t) for t in study.trials) == 5
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == stopped.number)
    assert retry.state == TrialState.COMPLETE and retry.params == stopped.params


def test_sigkill_mid_study_then_rerun_reaches_total(fakes, tmp_path: Path, runs: Path) -> None:
    total = 8
    script = tmp_path / "run.py"
    script.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('search_fakes', {str(fakes.path)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "from edgecompress.search import run_search\n"
        f"ev = m.FakeEvaluator({str(tmp_path / 'first.log')!r}, delay=0.5, block_after=3)\n"
        f"run_search(m.small_experiment(budget={{'sampler': 'random'}}), 'kill', trials={total}, evaluator=ev)\n"
    )
    err = tmp_path / "stderr.txt"
    with err.open("w") as fh:
        proc = subprocess.Popen([sys.executable, str(script)], env=dict(os.environ), stderr=fh)
    try:
        # progress, not speed: the 4th evaluation hangs (block_after=3) until the kill, so once it has started
        # (its line in the evaluator's log) 3 trials are complete and one is RUNNING, however slowly this machine
        # polls; the poller reads that log, not the study (a study read under load once failed for 180 s)
        log = tmp_path / "first.log"
        deadline = time.time() + 180
        while time.time() < deadline:
            time.sleep(0.2)
            if proc.poll() is not None:
                pytest.fail(f"the search ended (exit {proc.returncode}) before it was killed: "
                            f"{err.read_text()[-2000:]}")
            if log.is_file() and len(log.read_text().split()) >= 4:
                time.sleep(0.5)  # the hanging trial's RUNNING state is written before its evaluation starts
                break
        else:
            pytest.fail(f"the 4th evaluation did not start in 180 s: {err.read_text()[-2000:]}")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9
    before = load_study("kill").trials
    done = {t.number: (t.values, t.datetime_complete) for t in before if t.state == TrialState.COMPLETE}
    killed = [t.number for t in before if t.state == TrialState.RUNNING]
    assert len(killed) == 1 and len(done) >= 3

    rerun = fakes.FakeEvaluator(tmp_path / "second.log")
    summary = run_search(fakes.small_experiment(budget={"sampler": "random"}), "kill", trials=total, evaluator=rerun)
    study = load_study("kill")
    assert summary.stats.finished == total == sum(is_counted(t) for t in study.trials)
    for n, v in done.items():  # no finished trial lost ...
        assert (study.trials[n].values, study.trials[n].datetime_complete) == v
    done_hashes = {study.trials[n].user_attrs["config_hash"] for n in done}
    assert not done_hashes & set(rerun.calls())  # ... or trained again
    dead = study.trials[killed[0]]
    assert dead.state == TrialState.FAIL and not is_counted(dead)
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0])
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params


def test_two_workers_with_journal_storage(fakes, tmp_path: Path, runs: Path) -> None:
    evaluator = fakes.FakeEvaluator(tmp_path / "w.log", delay=0.3)
    exp = fakes.small_experiment(budget={"sampler": "random"})
    summary = run_search(exp, "workers", trials=6, workers=2, evaluator=evaluator)
    assert summary.storage == str(runs / "workers.journal")
    study = load_study("workers")
    numbers = [t.number for t in study.trials]
    assert len(numbers) == 6 and sorted(set(numbers)) == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.system_attrs["ec:pid"] for t in study.trials}) == 2  # both workers ran trials
    assert len({Path(t.user_attrs["artefact_dir"]) for t in study.trials}) == 6
