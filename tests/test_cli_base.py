"""`edgecompress zoo` and `train-base`: a second call reuses the cache and returns the same metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edgecompress.evaluators.train as train_mod
from edgecompress.cli import main

TINY = """
name: tiny
dataset: {name: fashion_mnist, train_subset: 256, val_subset: 128, test_subset: 128}
model: {name: resnet8, kwargs: {widths: [8, 16, 16]}}
base_training: {epochs: 1, batch_size: 64, lr: 0.05}
"""


def run_cli(args: list[str], env_runs: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGECOMPRESS_RUNS=str(env_runs))
    return subprocess.run([sys.executable, "-m", "edgecompress.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_train_base_reuses_cache(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    main(["train-base", str(cfg), "--json"])
    first = json.loads(capsys.readouterr().out)
    assert first["reused_cache"] is False and 0.0 <= first["test_accuracy"] <= 1.0

    calls = []
    monkeypatch.setattr(train_mod, "train_model", lambda *a, **k: calls.append(1))
    import edgecompress.evaluators.base_model as base_mod

    monkeypatch.setattr(base_mod, "train_model", lambda *a, **k: calls.append(1))
    main(["train-base", str(cfg), "--json"])
    second = json.loads(capsys.readouterr().out)
    assert calls == []  # no training step ran
    assert second["reused_cache"] is True
    for key in ("val_accuracy", "test_accuracy", "key", "epochs"):
        assert second[key] == first[key]


def test_training_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    main(["train-base", str(cfg), "--json"])
    first = json.loads(capsys.readouterr().out)
    main(["train-base", str(cfg), "--json", "--force"])
    second = json.loads(capsys.readouterr().out)
    assert second["reused_cache"] is False
    assert (second["val_accuracy"], second["test_accuracy"]) == (first["val_accuracy"], first["test_accuracy"])


def test_zoo_lists_models_and_datasets(tmp_path: Path) -> None:
    res = run_cli(["zoo"], tmp_path)
    assert res.returncode == 0
    for name in ("resnet8", "resnet50", "mobilenet_v2", "fashion_mnist", "cifar10", "imagefolder"):
        assert name in res.stdout


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [("model: {name: resnet9}\n", "unknown model 'resnet9'"),
     ("model: {nme: resnet8}\n", "model.nme: unknown key"),
     ("dataset: {root: /nonexistent/fm}\n", "dataset.root /nonexistent/fm: folder not found")],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path: Path, yaml_text: str, message: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    res = run_cli(["train-base", str(cfg)], tmp_path)
    assert res.returncode == 2
    assert message in res.stderr and res.stderr.strip().count("\n") == 0
    assert "Traceback" not in res.stderr


def test_train_base_in_logs_prints_one_line_per_epoch_on_stderr(tmp_path: Path) -> None:
    """With stderr not a terminal (a pipe here, CI logs), base training is not silent: one plain line per
    epoch on stderr (loss, training accuracy, elapsed time); stdout carries only the result (valid JSON)."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.replace("epochs: 1", "epochs: 2"))
    res = run_cli(["train-base", str(cfg), "--json"], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2, res.stderr
    for epoch, line in enumerate(lines, 1):
        assert line.startswith(f"training base resnet8 on fashion_mnist: epoch {epoch}/2 loss ")
        assert "train acc" in line and "s elapsed" in line
    metrics = json.loads(res.stdout)  # nothing but the JSON on stdout
    assert metrics["reused_cache"] is False and metrics["epochs"] == 2
    cached = run_cli(["train-base", str(cfg), "--json"], tmp_path)  # reused: nothing trains, nothing printed
    assert cached.returncode == 0 and cached.stderr == "" and json.loads(cached.stdout)["reused_cache"] is True
