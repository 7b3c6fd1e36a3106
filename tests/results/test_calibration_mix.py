"""A study whose measured latencies rest on two reference calibrations says so in pareto and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgecompress.results import calibration_mixes
from edgecompress.results.report import _get_report_info
from edgecompress.study import study_to_frame

# fixtures `handmade` and `mixed_calibrations` (tests/results/conftest.py)


def test_mixed_calibrations_are_counted_per_machine(mixed_calibrations, handmade) -> None:  # noqa: ANN001
    (mix,) = calibration_mixes(study_to_frame(mixed_calibrations.study))
    assert mix.device == "AMD EPYC"
    assert mix.trials_per_calibration == [2, 2]  # measured trials 0, 1 | 2, 4 (3 and 5 are estimated)
    assert mix.reference_ms == [0.178, 0.195] and mix.spread == pytest.approx(0.195 / 0.178 - 1)
    assert calibration_mixes(study_to_frame(handmade.study)) == []  # one calibration: nothing to say


def test_pareto_and_report_say_the_latencies_rest_on_two_calibrations(mixed_calibrations, handmade) -> None:  # noqa: ANN001
    env = dict(os.environ, EDGECOMPRESS_RUNS=str(mixed_calibrations.runs))
    cmd = [sys.executable, "-m", "edgecompress.cli", "pareto", "hm"]
    doc = json.loads(subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, timeout=120,
                                    check=True).stdout)
    (note,) = [n for n in doc["notes"] if "reference calibrations" in n]
    assert "rest on 2 reference calibrations" in note and "9.6% apart" in note
    assert "edgecompress remeasure hm" in note
    text = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    assert "rest on 2 reference calibrations" in " ".join(text.split())
    assert any("rest on 2 reference calibrations" in n for n in _get_report_info(mixed_calibrations.study)["notes"])
    assert not any("calibrations" in n for n in _get_report_info(handmade.study)["notes"])
