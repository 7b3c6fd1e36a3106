"""finalize: the front's configs and the uncompressed one re-trained at full fidelity into <study>-final."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from edgecompress.search.finalize import choose_configs, final_experiment, finalize_study
from edgecompress.search.study_setup import space_for
from edgecompress.study import attrs as A
from edgecompress.study import load_study, study_to_frame


@pytest.fixture
def proxy(tiny_study: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A private copy of the session's tiny search study (its base model cache linked, not retrained)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "cache").symlink_to(Path(tiny_study["runs"]) / "cache")
    with sqlite3.connect(Path(tiny_study["runs"]) / "tiny.db") as src, sqlite3.connect(runs / "tiny.db") as dst:
        src.backup(dst)  # WAL mode: the .db file alone may not hold the latest commits
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(runs))
    return {"runs": runs, "storage": f"sqlite:///{runs / 'tiny.db'}"}


def test_choice_is_front_first_then_ranks_and_always_the_uncompressed(proxy: dict) -> None:
    study = load_study("tiny", proxy["storage"])
    space = space_for(A.study_experiment(study))
    chosen = choose_configs(study_to_frame(study), top=2, uncompressed=space.uncompressed())
    assert chosen[-1].reason == "uncompressed" and chosen[-1].config_hash == space.uncompressed().config_hash()
    assert chosen[-1].proxy_trial == 0  # the search enqueues the uncompressed model first
    assert chosen[0].reason == "front" and len({c.config_hash for c in chosen}) == len(chosen) <= 3
    exp = final_experiment(A.study_experiment(load_study("tiny", proxy["storage"])), 2, {"finetune.lr": 0.01})
    assert exp.finetune.epochs == 2 and exp.finetune.train_subset is None and exp.finetune.augment
    assert exp.finetune.lr == 0.01 and exp.budget.sampler == "fixed"


def test_deployable_choice_skips_estimated_latencies(proxy: dict) -> None:
    """`finalize --deployable` ranks only trials whose latency was measured: the front config whose latency is
    turned into an estimate here drops out of the choice, and the ranks are recomputed without it."""
    study = load_study("tiny", proxy["storage"])
    space = space_for(A.study_experiment(study))
    df = study_to_frame(study)
    first = choose_configs(df, top=1, uncompressed=space.uncompressed())[0]
    df.loc[df[A.CONFIG_HASH] == first.config_hash, "latency_source"] = "estimated"
    assert first.config_hash in {c.config_hash for c in choose_configs(df, top=3, uncompressed=space.uncompressed())}
    chosen = choose_configs(df, top=3, uncompressed=space.uncompressed(), deployable=True)
    assert first.config_hash not in {c.config_hash for c in chosen}
    assert chosen[0].reason == "front" and chosen[-1].reason == "uncompressed"


def test_finalize_writes_the_linked_study_and_a_rerun_redoes_nothing(proxy: dict) -> None:
    summary = finalize_study("tiny", storage=proxy["storage"], top=2, epochs=1)
    final = optuna.load_study(study_name="tiny-final", storage=proxy["storage"])  # same storage file
    assert summary.study_name == "tiny-final" and final.metric_names == ["accuracy", "latency_ms"]
    assert final.user_attrs[A.FINALIZED_FROM] == "tiny"
    trials = final.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == len(summary.chosen)
    src = load_study("tiny", proxy["storage"], final="proxy")
    by_number = {t.number: t for t in src.trials}
    for t in trials:
        assert t.user_attrs[A.FIDELITY] == "final" and t.user_attrs["finetune_epochs"] == 1
        n = t.user_attrs[A.PROXY_TRIAL]
        if n is not None:  # same config, re-trained: other weights
            assert t.user_attrs[A.CONFIG_HASH] == by_number[n].user_attrs[A.CONFIG_HASH]
            assert t.user_attrs[A.WEIGHTS_HASH] != by_number[n].user_attrs[A.WEIGHTS_HASH]
    # the table printed after finalize: gains of finalized rows against the finalized uncompressed model, from the
    # finalized study only (it used to read the search study's trials with the same numbers)
    from edgecompress.cli.tables import front_gains_by_trial

    gains = front_gains_by_trial(summary.search)
    assert gains, "the finalized front has rows with gains"
    base_number = next(iter(gains.values()))["base_trial"]
    base = final.trials[base_number]
    assert base.user_attrs[A.PROXY_TRIAL] is None or base.params == src.trials[base.user_attrs[A.PROXY_TRIAL]].params
    for n, g in gains.items():
        t = final.trials[n]
        want_acc = (t.user_attrs["accuracy"] - base.user_attrs["accuracy"]) * 100
        assert abs(g["accuracy_change_pp"] - want_acc) < 1e-6, (n, g)
    # every command reads the finalized study by default; the search study with final="proxy"
    assert load_study("tiny").study_name == "tiny-final"
    assert load_study(proxy["storage"]).study_name == "tiny-final"  # a file with both counts as one study
    assert load_study("tiny", final="proxy").study_name == "tiny"
    # export reads the finalized study by default and ships its weights, not the search trial's
    from edgecompress.export.config_file import load_export_config
    from edgecompress.export.trial_export import export_trial

    pick = next(t for t in trials if t.user_attrs[A.PROXY_TRIAL] is not None)
    res = export_trial("tiny", proxy["runs"] / "export", trial=pick.number, formats="onnx")
    _, doc = load_export_config(res.out_dir)
    assert doc["study"] == "tiny-final" and doc["fidelity"] == "final"
    assert doc["weights_sha256"] == pick.user_attrs[A.WEIGHTS_HASH]
    assert doc["weights_sha256"] != by_number[pick.user_attrs[A.PROXY_TRIAL]].user_attrs[A.WEIGHTS_HASH]
    # the report draws search vs finalized accuracy per config
    from edgecompress.results.report import _get_report_info

    fid = _get_report_info(load_study("tiny"), proxy=load_study("tiny", final="proxy"))["fidelity"]
    linked = [t for t in trials if t.user_attrs[A.PROXY_TRIAL] is not None]
    assert sorted(p["final_trial"] for p in fid["points"]) == sorted(t.number for t in linked)
    assert all(p["proxy_accuracy"] == by_number[p["proxy_trial"]].values[0] for p in fid["points"])
    assert len(linked) < 3 or -1 <= fid["kendall_tau"] <= 1
    # `pareto` says which results it shows; --proxy shows the search's
    def cli(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "edgecompress.cli", *args], capture_output=True, text=True,
                             env=dict(os.environ), timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout

    shown = cli("pareto", "tiny")
    assert "finalized results: study tiny-final" in shown and "tiny-final: Pareto front" in shown
    assert "[" in shown  # accuracies carry their 95% interval
    search_view = cli("pareto", "tiny", "--proxy")
    assert "finalized results" not in search_view and "tiny: Pareto front" in search_view
    before = {t.number: t.datetime_complete for t in trials}
    again = finalize_study("tiny", storage=proxy["storage"], top=2, epochs=1)
    assert again.search.new_trials == 0
    assert {t.number: t.datetime_complete for t in final.get_trials(states=(TrialState.COMPLETE,))} == before


def test_finalize_survives_sigkill_and_the_rerun_finishes_only_what_is_left(proxy: dict, tmp_path: Path) -> None:
    script = tmp_path / "fin.py"
    script.write_text(
        "from edgecompress.search.finalize import finalize_study\n"
        "if __name__ == '__main__':\n"
        f"    finalize_study('tiny', storage={proxy['storage']!r}, top=2, epochs=2)\n")
    proc = subprocess.Popen([sys.executable, str(script)], env=dict(os.environ), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(0.3)
            try:
                states = [t.state for t in optuna.load_study(study_name="tiny-final",
                                                             storage=proxy["storage"]).get_trials(deepcopy=False)]
            except KeyError:
                continue
            if TrialState.COMPLETE in states and TrialState.RUNNING in states:
                break
        else:
            pytest.fail("finalize did not finish one trial and start the next in 300 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    final = optuna.load_study(study_name="tiny-final", storage=proxy["storage"])
    done = {t.number: t.datetime_complete for t in final.get_trials(states=(TrialState.COMPLETE,))}
    summary = finalize_study("tiny", storage=proxy["storage"], top=2, epochs=2)
    trials = final.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(summary.chosen)  # every config once
    assert len({t.user_attrs[A.CONFIG_HASH] for t in complete}) == len(complete)
    assert all(t.datetime_complete == done[t.number] for t in complete if t.number in done)  # not redone
    died = [t for t in trials if t.state == TrialState.FAIL]
    assert len(died) == 1 and died[0].user_attrs[A.STATE_DETAIL] == "died"
