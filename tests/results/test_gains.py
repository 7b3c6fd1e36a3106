"""Deployable fronts and gains against the uncompressed trial, on the hand-made study (tests/results/handmade.py)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from edgecompress.export.choice import choose_trial
from edgecompress.results.gains import base_trial, front_gains, gains
from edgecompress.results.report import _get_report_info
from edgecompress.study import attrs as A
from edgecompress.study import front, study_to_frame
from edgecompress.study.intervals import paired_difference


def _cli(args: list[str], runs) -> subprocess.CompletedProcess:  # noqa: ANN001
    env = dict(os.environ, EDGECOMPRESS_RUNS=str(runs))
    return subprocess.run([sys.executable, "-m", "edgecompress.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_the_deployable_front_is_computed_over_deployable_trials(handmade) -> None:
    df = study_to_frame(handmade.study)
    full = [int(n) for n in front(df)["number"]]
    deployable = [int(n) for n in front(df, deployable=True)["number"]]
    assert full == handmade.FRONT and deployable == handmade.DEPLOYABLE_FRONT
    filtered = [n for n in full if handmade.TRIALS[n][5] == "measured"]
    assert filtered == [0]  # the full front filtered afterwards would lose trials 1 and 2


def test_gains_equal_the_values_computed_by_hand(handmade) -> None:
    df = study_to_frame(handmade.study)
    assert int(base_trial(df)["number"]) == 0
    rows = df.set_index("number", drop=False).loc[[0, 1, 3]]
    g, base = front_gains(df, rows)
    g.index = [0, 1, 3]
    # trial 1 vs base 0: 1.0/0.5 ms at batch 1, 20/8 ms at batch 64, 400k/100k bytes, 0.90 - 0.92
    assert g.loc[1, "speedup_b1"] == pytest.approx(2.0) and g.loc[1, "speedup_batch"] == pytest.approx(2.5)
    assert g.loc[1, "size_reduction"] == pytest.approx(4.0) and g.loc[1, "accuracy_change_pp"] == pytest.approx(-2.0)
    d = paired_difference(handmade.correctness(1), handmade.correctness(0))
    assert d.diff == pytest.approx(-0.02)  # the saved logits give the trials' accuracies
    assert g.loc[1, "accuracy_change_low_pp"] == pytest.approx(100 * d.low)
    assert g.loc[1, "accuracy_change_high_pp"] == pytest.approx(100 * d.high)
    assert g.loc[1, "accuracy_change_p"] == pytest.approx(d.p_value)
    assert g.loc[1, "accuracy_change_basis"] == "paired, 100 val images"
    # trial 3 saved no logits: gains, but no interval, and the basis says why
    assert (g.loc[3, "speedup_b1"], g.loc[3, "speedup_batch"], g.loc[3, "size_reduction"]) == pytest.approx(
        (5.0, 5.0, 16.0))
    assert math.isnan(g.loc[3, "accuracy_change_low_pp"])
    assert g.loc[3, "accuracy_change_basis"] == "no per-sample val logits for trial 3"
    assert g.loc[0, "speedup_b1"] == 1.0 and g.loc[0, "accuracy_change_basis"] == "the base itself"
    none = gains(rows, None)
    assert none["speedup_b1"].isna().all() and set(none["accuracy_change_basis"]) == {
        "no uncompressed trial in the study"}


def test_export_choice_with_deployable_never_picks_an_estimated_trial(handmade) -> None:
    df = study_to_frame(handmade.study)
    assert choose_trial(df, knee=True).number == 3  # the knee of the full front is estimated
    assert choose_trial(df, knee=True, deployable=True).number == 1
    assert choose_trial(df, min_accuracy=0.86).number == 3
    assert choose_trial(df, min_accuracy=0.86, deployable=True).number == 1
    assert choose_trial(df, max_latency=0.45, deployable=True).number == 2
    with pytest.raises(ValueError, match="trial 3's latency is estimated"):
        choose_trial(df, trial=3, deployable=True)


def _main(args: list[str], capsys) -> str:  # noqa: ANN001
    """stdout of `edgecompress ARGS` run in this process (exit 0)."""
    from edgecompress.cli import main

    try:
        main(args)
    except SystemExit as e:
        assert not e.code, capsys.readouterr().err
    return capsys.readouterr().out


def test_pareto_json_and_table_show_the_deployable_front_with_gains(handmade, capsys, monkeypatch) -> None:
    res = _cli(["pareto", "hm", "--deployable", "--json"], handmade.runs)  # a real process: stdout is only JSON
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)  # stdout is only the JSON document
    assert doc["deployable"] is True and doc["base_trial"] == 0
    rows = {r["trial"]: r for r in doc["rows"]}
    assert list(rows) == handmade.DEPLOYABLE_FRONT
    assert rows[1]["speedup_b1"] == pytest.approx(2.0) and rows[2]["speedup_batch"] == pytest.approx(20 / 6)
    assert rows[2]["size_reduction"] == pytest.approx(8.0) and rows[0]["is_base"] is True
    assert not any(r["estimated"] for r in doc["rows"])
    full = json.loads(_main(["pareto", "hm", "--json"], capsys))
    assert [r["trial"] for r in full["rows"]] == handmade.FRONT
    from edgecompress.cli import base_cmd as cli_base

    monkeypatch.setattr(cli_base.console, "width", 240)
    table = _main(["pareto", "hm", "--deployable"], capsys)
    line = next(ln for ln in table.splitlines() if re.match(r"^│\s+1\s", ln))
    assert "2.00x" in line and "2.50x" in line and "4.00x" in line and "-2.00 pp [" in line
    assert "gains against the base (uncompressed, trial 0)" in table


def test_report_info_has_both_fronts_and_the_base(handmade) -> None:
    info = _get_report_info(handmade.study, deployable=True)
    assert info["front_numbers"] == handmade.FRONT
    assert info["deployable_front_numbers"] == handmade.DEPLOYABLE_FRONT
    assert info["base"]["number"] == 0 and info["base"]["values"] == [0.92, 1.0]
    table = info["deployable_front_table"]
    assert "speedup_b1" in table["columns"] and "accuracy_change_basis" in table["columns"]
    assert [r["speedup_b1"] for r in table["rows"]] == pytest.approx([2.5, 2.0, 1.0])
    assert any("differs from the deployable front" in n for n in info["notes"])


def test_the_base_is_the_full_uncompressed_config_wherever_it_is(handmade) -> None:
    """A finalized study re-trains the uncompressed config last: the base is found by its config, not by number;
    a 32-bit unpruned config that keeps fewer blocks is not the base."""
    df = study_to_frame(handmade.study).copy()
    cfg0 = dict(df.loc[0, "config"])
    df.at[0, "config"] = {**cfg0, "w_bits": 8, "a_bits": 8}  # trial 0 is no longer uncompressed
    assert base_trial(df) is None
    shallow = df.index[df["number"] == 4][0]
    df.at[shallow, "config"] = {**cfg0, "depth": [1, 1, 0]}
    df.at[shallow, "blocks_kept"] = [1, 1, 0]
    full = df.index[df["number"] == 2][0]
    df.at[full, "config"] = cfg0
    assert int(base_trial(df)["number"]) == 2


def test_cascade_candidates_take_dynamic_cropping_trials_at_the_canvas(handmade) -> None:
    """A crop: dic trial on the deployable front is a cascade stage fed the raw canvas (its deployed graph: box
    net -> crop -> classifier), so its stage input is its pipeline_input_size; one that does not record it is left
    out with a note naming it."""
    from optuna.trial import create_trial

    from edgecompress.cascade.pipeline.study_candidates import study_candidates

    t1 = handmade.study.trials[1]
    attrs = dict(t1.user_attrs)
    attrs[A.CONFIG] = {**attrs[A.CONFIG], "crop": "dic"}
    attrs.update({A.CONFIG_HASH: "h6", "accuracy": 0.91, "latency_ms": 0.45})  # on the front beside 0 and 2
    handmade.study.add_trial(create_trial(values=[0.91, 0.45], params=t1.params, distributions=t1.distributions,
                                          user_attrs=attrs))
    cands, _, notes = study_candidates(handmade.study)
    assert 6 not in [c.number for c in cands] and 0 in [c.number for c in cands]
    assert any("trial 6" in n and "crop: dic" in n for n in notes)
    attrs.update({A.CONFIG_HASH: "h7", "pipeline_input_size": 48, "accuracy": 0.915, "latency_ms": 0.44})
    handmade.study.add_trial(create_trial(values=[0.915, 0.44], params=t1.params, distributions=t1.distributions,
                                          user_attrs=attrs))
    cands, _, notes = study_candidates(handmade.study)
    dic = next(c for c in cands if c.number == 7)
    assert dic.crop == "dic" and dic.spec.input_size == 48 and dic.classifier_size == int(attrs["input_size"])
