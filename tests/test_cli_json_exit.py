"""`--json` commands write only JSON on stdout (logs and progress on stderr), and each documented exit code
(README "Exit codes": 0 ok, 1 failed check, 2 bad input, 130 interrupted) comes from a real command, run as a
user runs it (`python -m edgecompress.cli`, stdout and stderr pipes) on a Fashion-MNIST subset."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = """
name: json
seed: 0
dataset: {name: fashion_mnist, train_subset: 256, val_subset: 128, test_subset: 128}
model: {name: resnet8, kwargs: {widths: [8, 8, 16]}}
base_training: {epochs: 1, batch_size: 64}
finetune: {epochs: 1, batch_size: 64, train_subset: 128}
space: {prune: {choices: [0.0, 0.5]}, bits: {choices: [32]}, resolution: {choices: [0.5, 1.0]}}
budget: {trials: 2, sampler: random}
device: {device: cpu, threads: 1, min_repeats: 3, max_seconds: 0.1, batch_size: 4}
"""


def run_cli(args: list[str], runs: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGECOMPRESS_RUNS=str(runs))
    return subprocess.run([sys.executable, "-m", "edgecompress.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, fmnist_dir: Path) -> tuple[Path, Path]:
    """(runs folder, config file): one runs folder for the module, so the base model trains once."""
    folder = tmp_path_factory.mktemp("jsoncli")
    cfg = folder / "tiny.yaml"
    cfg.write_text(TINY)
    return folder / "runs", cfg


def test_json_commands_write_only_json_on_stdout(workdir: tuple[Path, Path]) -> None:
    runs, cfg = workdir
    base = run_cli(["train-base", str(cfg), "--json"], runs)
    assert base.returncode == 0, base.stderr[-2000:]
    assert json.loads(base.stdout)["epochs"] == 1
    assert "training base resnet8 on fashion_mnist: epoch 1/1" in base.stderr  # the log went to stderr

    ev = run_cli(["evaluate", str(cfg), "--set", "prune=0.5", "--json"], runs)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout)["state"] == "complete"
    assert "fine-tune epoch 1: val accuracy" in ev.stderr

    se = run_cli(["search", str(cfg), "--study", "j", "--trials", "2", "--json"], runs)
    assert se.returncode == 0, se.stderr[-2000:]
    assert json.loads(se.stdout)["stats"]["finished"] == 2
    assert "j [" in se.stderr and "trial 1 complete" in se.stderr

    pa = run_cli(["pareto", "j", "--json", "--deployable"], runs)
    assert pa.returncode == 0, pa.stderr[-2000:]
    doc = json.loads(pa.stdout)
    assert doc["base_trial"] == 0 and doc["rows"][-1]["trial"] in (0, 1)  # trial 0: the enqueued uncompressed
    assert all(r["accuracy_change_basis"].startswith(("paired", "the base")) for r in doc["rows"])


def _handmade(runs: Path) -> None:
    spec = importlib.util.spec_from_file_location("handmade", Path(__file__).parent / "results" / "handmade.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs.mkdir(parents=True, exist_ok=True)
    mod.make_study(runs)


def test_exit_codes_0_1_2_from_real_commands(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _handmade(runs)
    ok = run_cli(["pareto", "hm"], runs)
    assert ok.returncode == 0 and "Pareto front" in ok.stdout, ok.stderr
    # 1: a failed check: no deployable trial reaches the accuracy asked, so export refuses (no --force)
    check = run_cli(["export", "hm", "--min-accuracy", "0.99", "--deployable", "-o", str(tmp_path / "out")], runs)
    assert check.returncode == 1, check.stderr
    assert check.stderr.startswith("error: no point meets accuracy >= 0.99") and not (tmp_path / "out").exists()
    # 2: bad input, one line
    bad = run_cli(["pareto", "hm", "--bogus"], runs)  # a usage error
    assert bad.returncode == 2 and "No such option: --bogus" in bad.stderr and "Traceback" not in bad.stderr
    assert bad_range_line(runs) == "error: --min-accuracy: must be in [0, 1], got 2.0"


def bad_range_line(runs: Path) -> str:
    """The one stderr line of a bad option value (an EdgeCompressError: exit 2)."""
    res = run_cli(["pareto", "hm", "--min-accuracy", "2"], runs)
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    return line


def test_exit_code_130_when_interrupted(workdir: tuple[Path, Path], tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) during a long base training: 'interrupted' on stderr, exit 130, nothing on stdout."""
    runs, _ = workdir  # the module's runs folder: its cached memory-format probe saves a few seconds
    long = tmp_path / "long.yaml"
    long.write_text(TINY.replace("base_training: {epochs: 1", "base_training: {epochs: 500"))
    env = dict(os.environ, EDGECOMPRESS_RUNS=str(runs))
    proc = subprocess.Popen([sys.executable, "-m", "edgecompress.cli", "train-base", str(long), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = proc.stderr.readline()  # the first epoch's line: training is under way, inside main()
    assert "epoch 1/500" in first, first
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted" and out == ""
