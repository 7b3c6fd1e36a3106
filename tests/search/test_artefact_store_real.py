"""The real evaluator with an fsspec URL artefact store (`--artefacts file://...`, a folder that is not the runs
folder): two worker processes upload every trial; once the trials' local folders are deleted (as on worker
machines cleaned up after the search), `export` and `cascade` read the models and logits from the store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

import edgecompress
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.study import artefact_store, load_study

pytestmark = pytest.mark.slow

REPO = Path(edgecompress.__file__).resolve().parents[1]


def test_workers_upload_to_a_url_store_and_export_cascade_read_it(tmp_path: Path, fmnist_dir, tiny_pipeline) -> None:
    cfg = tmp_path / "tiny.yaml"
    tiny = tiny_pipeline(name="tiny-store", budget={"trials": 4, "sampler": "random",
                                                    "enqueue": [{"prune": 0.5, "resolution": 0.5}]})
    tiny["finetune"]["epochs"] = 0  # the store is under test, not training
    cfg.write_text(yaml.safe_dump(tiny))
    work, store = tmp_path / "work", f"file://{tmp_path / 'objstore'}"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("EDGECOMPRESS_RUNS", "EDGECOMPRESS_ARTEFACTS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")

    def cli(*args: str) -> str:
        p = subprocess.run([sys.executable, "-m", "edgecompress.cli", *args], cwd=work, env=env, text=True,
                           capture_output=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stdout

    cli("search", str(cfg), "--study", "st", "--workers", "2", "--trials", "4", "--artefacts", store,
        "--no-progress")
    url = str(work / "runs" / "st.journal")
    trials = load_study("st", storage=url).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(trials) == 4 and len(complete) >= 2, [t.user_attrs.get("fail_reason") for t in trials]
    for t in complete:
        assert Path(t.user_attrs["artefact_dir"]).is_relative_to(work / "runs" / "st")
        uri = t.user_attrs["artefact_uri"]
        assert uri.startswith(f"{store}/st/trials/")
        files = artefact_store.manifest(uri)
        assert {ARTEFACT_FILES[k] for k in ("model", "val_logits", "test_logits")} <= set(files)
    shutil.rmtree(work / "runs" / "st")  # the workers' local trial folders are gone
    best = max(complete, key=lambda t: t.values[0])
    cli("export", "st", "--storage", url, "--trial", str(best.number), "--format", "yaml,onnx",
        "-o", str(tmp_path / "exported"))
    assert (tmp_path / "exported" / "model.onnx").is_file()
    printed = cli("cascade", "st", "--storage", url, "-o", str(tmp_path / "cascade"), "--samples", "40",
                  "--min-accuracy", "0.0")
    assert "wrote" in printed
    ev = json.loads((tmp_path / "cascade" / "evaluation.json").read_text())
    assert len(ev["plan"]["stages"]) >= 1
    assert any((work / "runs" / "store-cache").iterdir())  # read from the store's copies
    assert not (work / "runs" / "st").exists()
