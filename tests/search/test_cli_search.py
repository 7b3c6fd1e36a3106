"""`edgecompress search` CLI: fake evaluator end to end, errors, and one real Fashion-MNIST run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from edgecompress.cli import main
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.search import optuna_runner
from edgecompress.study import load_study


@pytest.fixture(autouse=True)
def _app_with_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI app with the search command, whether or not cli/__init__ registers it already."""
    import typer

    import edgecompress.cli as cli
    from edgecompress.cli import search_cmd as search_cli

    if "search" not in {c.name or c.callback.__name__ for c in cli.app.registered_commands}:
        app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
        app.callback()(lambda: None)  # a group, so `search` is a subcommand as in the real app
        search_cli.register(app)
        monkeypatch.setattr(cli, "app", app)


def _write(tmp_path: Path, exp) -> Path:  # noqa: ANN001
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp.to_dict()))
    return path


def test_cli_search_runs_resumes_and_prints_front(fakes, fake_evaluator, tmp_path: Path, monkeypatch,
                                                  capsys) -> None:
    monkeypatch.setattr(optuna_runner, "build_trial_evaluator", lambda exp: fake_evaluator)
    cfg = _write(tmp_path, fakes.small_experiment())
    main(["search", str(cfg), "--study", "cli", "--trials", "3", "--no-progress", "--seed", "1"])
    main(["search", str(cfg), "--study", "cli", "--trials", "5", "--no-progress", "--set", "budget.sampler=random"])
    out = capsys.readouterr().out
    assert "Pareto front" in out and "2 new trial(s)" in out and "5/5 trials" in out
    study = load_study("cli")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5


def test_cli_search_in_logs_prints_one_line_per_trial_on_stderr(fakes, fake_evaluator, tmp_path: Path,
                                                              monkeypatch, capsys) -> None:
    """Not on a terminal (and with --json), progress is plain lines on stderr, one per finished trial with
    its outcome; stdout holds only the JSON summary."""
    import json

    monkeypatch.setattr(optuna_runner, "build_trial_evaluator", lambda exp: fake_evaluator)
    cfg = _write(tmp_path, fakes.small_experiment())
    main(["search", str(cfg), "--study", "logs", "--trials", "3", "--json"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["stats"]["finished"] == 3
    lines = captured.err.splitlines()
    assert len(lines) == 4 and all(line.startswith("logs [") for line in lines), captured.err
    assert "0/3 trials" in lines[0]
    for n, line in enumerate(lines[1:]):
        assert f"] trial {n} complete (accuracy " in line and ", latency_ms " in line and f"{n + 1}/3 trials" in line


def test_cli_search_errors_are_one_line(fakes, tmp_path: Path, capsys) -> None:
    cfg = _write(tmp_path, fakes.small_experiment())
    with pytest.raises(SystemExit) as e:
        main(["search", str(cfg), "--study", "bad", "--sampler", "bogus", "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --sampler 'bogus'") and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["search", str(cfg), "--study", "bad", "--backend", "spark"])
    assert e.value.code == 2 and "--backend 'spark'" in capsys.readouterr().err


# 25-80 s on 2 cores: base model + 6 fine-tunes + latency measurements (in the default run: it is the e2e test)
@pytest.mark.usefixtures("fmnist_dir")
def test_cli_search_real_evaluator_fashion_mnist(tmp_path: Path, runs: Path, capsys: pytest.CaptureFixture) -> None:
    """The real evaluator end to end; with stderr not a terminal (captured here, as in CI logs) the base
    model's training (in the trial worker process) and every finished trial print a plain line on stderr."""
    exp = {
        "name": "fm-tiny", "seed": 0,
        "dataset": {"name": "fashion_mnist", "train_subset": 300, "val_subset": 100, "test_subset": 100},
        "model": {"name": "resnet8"},
        "base_training": {"epochs": 2, "batch_size": 64},
        "finetune": {"epochs": 1, "batch_size": 64},
        "space": {"prune": {"choices": [0.0, 0.25, 0.5]}, "bits": {"choices": [32, 8]},
                  "resolution": {"choices": [0.5, 1.0]}},
        "budget": {"trials": 6, "sampler": "random"},
        "device": {"device": "cpu", "min_repeats": 3, "max_seconds": 0.2, "batch_size": 8},
    }
    cfg = tmp_path / "fm.yaml"
    cfg.write_text(yaml.safe_dump(exp))
    main(["search", str(cfg), "--study", "fm", "--trials", "6"])
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    epochs = [line for line in err if line.startswith("fm: base model: epoch ")]
    assert [line.split()[4] for line in epochs] == ["1/2", "2/2"], captured.err
    assert all(" loss " in line and " train acc " in line and "s elapsed" in line for line in epochs)
    finished = [line for line in err if line.startswith("fm [") and " | " in line and "trial" in line]
    assert [line.split("] ", 1)[1].split(" ")[:2] for line in finished[1:]] == [["trial", str(n)] for n in range(6)]
    assert finished[0].startswith("fm [") and "0/6 trials" in finished[0] and "6/6 trials" in finished[-1]
    assert len(err) == 2 + 1 + 6, captured.err  # nothing else, and progress never on stdout
    assert "base model" not in captured.out and "Pareto front" in captured.out
    study = load_study("fm")
    assert len(study.trials) == 6
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    for t in study.trials:
        assert len(t.values) == 2 and 0.0 <= t.values[0] <= 1.0 and t.values[1] > 0
        folder = Path(t.user_attrs["artefact_dir"])
        assert all((folder / name).is_file() for name in ARTEFACT_FILES.values()), folder
