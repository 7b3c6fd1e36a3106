"""Report info as plain data (no plotly) and the offline HTML file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from edgecompress.results import build_report
from edgecompress.results.plots import ESTIMATED_LABEL
from edgecompress.results.report import _get_report_info
from edgecompress.study import study_to_frame

CASCADE = [
    {"expected_latency_ms": 0.9, "accuracy": 0.91, "models": [4, 1]},
    {"expected_latency_ms": 0.6, "accuracy": 0.88, "models": [4, 2]},
]


def test_info_is_plain_data_with_the_right_front_and_counts(study_db, spec):
    study, _ = study_db
    info = _get_report_info(study, cascade_info=CASCADE)
    json.dumps(info)  # plain data only
    assert info["front_numbers"] == spec.FRONT
    assert info["counts"] == {
        "total": 9, "complete": 7, "feasible": 5, "infeasible": 2, "failed": 1, "pruned": 1, "running": 0
    }
    cats = {p["number"]: p["category"] for p in info["points"]}
    assert cats == {0: "infeasible", 6: "infeasible", 3: "dominated", 1: "front", 2: "front", 4: "front",
                    8: "front"}
    assert {p["number"] for p in info["points"] if p["estimated"]} == {4, 6}
    hover = next(p["hover"] for p in info["points"] if p["number"] == 1)
    assert hover["trial"] == 1 and hover["params_prune"] == 0.25 and hover["macs"] == 750000
    assert hover["latency_p90_ms"] == pytest.approx(1.65) and hover["backend"] == "onnxruntime"
    assert info["pairs"] == [(0, 1)]
    assert [r["number"] for r in info["front_table"]["rows"]] == spec.FRONT
    assert info["failures"] == [{"number": 5, "fail_reason": spec.FAIL_REASON}]
    assert [c["expected_latency_ms"] for c in info["cascade"]] == [0.6, 0.9]  # sorted by latency


def test_info_hypervolume_parallel_and_importance(study_db):
    study, _ = study_db
    info = _get_report_info(study)
    hv = info["hypervolume"]
    assert hv["numbers"] == [0, 1, 2, 3, 4, 6, 8]
    assert hv["values"][0] == 0.0  # trial 0 is infeasible
    assert all(b >= a for a, b in zip(hv["values"], hv["values"][1:], strict=False)) and hv["values"][-1] > 0
    dims = {d["name"]: d for d in info["parallel"]["dimensions"]}
    assert set(dims) == {"prune", "bits", "resolution", "accuracy", "latency_ms"}
    assert len(dims["prune"]["values"]) == 7
    assert set(info["importance"]) == {"accuracy", "latency_ms"}
    for imp in info["importance"].values():
        assert set(imp) <= {"prune", "bits", "resolution"} and sum(imp.values()) == pytest.approx(1.0)
    assert info["cascade"] is None


def test_info_from_a_frame_and_from_few_trials_notes_what_is_skipped(study_db, tmp_path):
    study, _ = study_db
    info = _get_report_info(study_to_frame(study))
    assert info["importance"] == {} and any("needs the Optuna study" in n for n in info["notes"])
    small = optuna.create_study(directions=["maximize", "minimize"])
    for acc, lat in [(0.9, 2.0), (0.8, 1.0)]:
        small.add_trial(create_trial(values=[acc, lat], params={"p": acc},
                                     distributions={"p": FloatDistribution(0, 1)}))
    info = _get_report_info(small)
    assert info["importance"] == {} and any("skipped: 2 complete trials" in n for n in info["notes"])
    assert info["front_numbers"] == [1, 0]  # sorted by the minimised objective (value_1)


def test_report_html_is_offline_and_lists_the_front(study_db, spec, tmp_path):
    study, _ = study_db
    out = build_report(study, tmp_path / "sub" / "report.html", cascade_info=CASCADE)
    assert out.exists() and [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp left
    text = out.read_text()
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched from the network
    assert "plotly.js v" in text and "Plotly.newPlot" in text
    for n in spec.FRONT:
        assert f'<tr id="trial-{n}">' in text
    assert '<tr id="trial-3">' not in text and '<tr id="trial-0">' not in text  # dominated, infeasible
    assert ESTIMATED_LABEL in text
    assert "Cascade" in text and "Hypervolume over trials" in text and "Parameter importance" in text
    assert spec.FAIL_REASON in text


def test_report_with_three_objectives_and_no_cascade(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'three.db'}",
                                directions=["maximize", "minimize", "minimize"])
    objectives = [{"name": "accuracy", "direction": "maximize"},
                  {"name": "latency_ms", "direction": "minimize"},
                  {"name": "size_bytes", "direction": "minimize"}]
    study.set_user_attr("objectives", objectives)
    pts = [(0.9, 2.0, 300.0), (0.8, 1.0, 200.0), (0.85, 1.5, 100.0), (0.7, 2.5, 400.0)]
    for acc, lat, size in pts:
        study.add_trial(create_trial(values=[acc, lat, size], params={"p": lat},
                                     distributions={"p": FloatDistribution(0, 3)}))
    info = _get_report_info(study)
    assert info["pairs"] == [(0, 1), (0, 2), (1, 2)]
    assert info["front_numbers"] == [1, 2, 0]  # trial 3 is dominated by every other
    text = build_report(study, tmp_path / "r3.html").read_text()
    assert "Cascade" not in text and text.count("plotly.js v") == 1


def test_report_with_one_objective_plots_it_per_trial(tmp_path):
    study = optuna.create_study(direction="maximize")
    for v in [0.5, 0.7, 0.6]:
        study.add_trial(create_trial(value=v))
    info = _get_report_info(study)
    assert info["pairs"] == [] and info["front_numbers"] == [1]
    assert "value_0 per trial" in build_report(study, tmp_path / "r1.html").read_text()


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _headless(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with every network request sent to a dead proxy (offline)."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--proxy-server=127.0.0.1:9", "--virtual-time-budget=5000",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)


needs_chromium = pytest.mark.needs("chromium")


@needs_chromium
def test_report_renders_offline_in_headless_chromium(study_db, tmp_path):
    """Without network the plots must still draw: plotly.js is in the file."""
    study, _ = study_db
    out = build_report(study, tmp_path / "report.html", cascade_info=CASCADE)
    dom = _headless(tmp_path, "--dump-dom", out.as_uri()).stdout
    # one graph div per figure (front, parameters, hypervolume, importance, cascade), each drawn as SVG
    assert dom.count('class="plotly-graph-div') == 5
    assert dom.count('class="main-svg"') >= 5


@pytest.mark.slow
@needs_chromium
def test_report_screenshot(study_db, tmp_path):
    """Screenshot script for looking at a report as a user would (kept as a slow test)."""
    study, _ = study_db
    out = build_report(study, tmp_path / "report.html", cascade_info=CASCADE)
    png = tmp_path / "report.png"
    _headless(tmp_path, "--window-size=1400,3000", f"--screenshot={png}", out.as_uri())
    assert png.stat().st_size > 50_000  # a blank page compresses to a few kB
