"""A study written before issue 27's changes (served-trial core, folders, trial record) still opens, keeps its
config hashes, exports and cascades.

tests/data/old_study was written by `make_old_study.py` there with the code of commit d74186f (4 trials on a
Fashion-MNIST subset: SQLite study + each trial's artefact folder). The test copies it and points the trials'
artefact_dir at the copy (the only machine-specific value in it).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "old_study"
WRITTEN_AT = "/tmp/ec-old-study/runs/old/trials"


@pytest.fixture
def old_study(tmp_path: Path, fmnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    shutil.copytree(DATA / "trials", tmp_path / "trials")
    shutil.copy(DATA / "old.db", tmp_path / "old.db")
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute("UPDATE trial_user_attributes SET value_json = replace(value_json, ?, ?)",
                   (WRITTEN_AT, str(tmp_path / "trials")))
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path / "runs"))
    return f"sqlite:///{tmp_path / 'old.db'}"


def test_a_study_written_before_the_change_keeps_its_hashes_exports_and_cascades(old_study: str,
                                                                                 tmp_path: Path) -> None:
    from edgecompress.cascade.pipeline.from_study import cascade_from_study
    from edgecompress.export.trial_export import export_trial
    from edgecompress.search.study_setup import experiment_hash
    from edgecompress.spaces import CompressionConfig
    from edgecompress.study import TrialRecord, load_study
    from edgecompress.study import attrs as A

    study = load_study(old_study)
    assert len(study.trials) == 4
    exp = A.study_experiment(study)
    assert experiment_hash(exp) == study.user_attrs[A.EXPERIMENT_HASH]
    for t in study.trials:
        rec = TrialRecord.of(t)
        assert CompressionConfig.from_dict(rec.config).config_hash() == rec.config_hash, t.number
    stored = {json.loads(v) for (v,) in sqlite3.connect(old_study.removeprefix("sqlite:///")).execute(
        "SELECT value_json FROM trial_user_attributes WHERE key = 'config_hash'")}
    assert stored == {"10b1dfa5a3d7", "1588a2aaf7b1", "e92df1d4cab7", TrialRecord.of(study.trials[3]).config_hash}

    res = export_trial(old_study, tmp_path / "export", trial=1, formats="onnx")  # an int8 trial
    assert res.ok and {p.name for p in (tmp_path / "export").iterdir()} >= {"model.onnx", "model_int8.onnx"}
    built = cascade_from_study(old_study, tmp_path / "cascade", samples=200)
    assert (tmp_path / "cascade" / "cascade.yaml").is_file() and built.plan.stages
