"""CLI pareto / report / export / retarget on a real study, through the real entry point (main)."""

from __future__ import annotations

import re

import optuna
import pandas as pd
import pytest
import typer
from optuna.trial import create_trial

import edgecompress.cli as cli
from edgecompress.cli import base_cmd as cli_base
from edgecompress.cli import results_cmd as results_cli
from edgecompress.errors import EdgeCompressError
from edgecompress.results import pareto_front
from edgecompress.study import load_study, study_to_frame


@pytest.fixture
def run(monkeypatch, capsys):
    """run(*args) -> (exit code, stdout, stderr) of `edgecompress ARGS` with the result commands."""
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    results_cli.register(app)

    @app.command()
    def _noop() -> None:  # keeps typer in multi-command mode
        """unused"""

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(cli_base.console, "width", 240)

    def _run(*args: str) -> tuple[int, str, str]:
        code = 0
        try:
            cli.main(list(args))
        except SystemExit as e:
            code = int(e.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run


def _table_trials(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^│\s+(\d+)", text, flags=re.M)]


def test_pareto_prints_front_marks_estimates_and_writes_csv(real_db, run, tmp_path) -> None:
    df = study_to_frame(load_study(real_db.url))
    front = pareto_front(df)
    csv = tmp_path / "sub" / "all.csv"
    code, out, err = run("pareto", "fmx", "--csv", str(csv))
    assert code == 0, err
    assert _table_trials(out) == list(front["number"])  # sorted by latency
    assert "3 trials: 3 feasible, 0 infeasible, 0 failed, 0 pruned" in out
    est = front[front["latency_source"] == "estimated"]
    lines = {n: next(ln for ln in out.splitlines() if re.match(rf"^│\s+{n}\s", ln)) for n in front["number"]}
    for n, line in lines.items():
        assert ("(est.)" in line and "~" in line) == (n in set(est["number"]))
    back = pd.read_csv(csv)
    assert list(back["number"]) == list(df["number"])
    assert back["accuracy"].tolist() == pytest.approx(df["accuracy"].tolist())
    assert not list(csv.parent.glob(".*tmp"))

    lat = sorted(df["latency_ms"])
    limit_ms = (lat[1] + lat[2]) / 2  # between the 2nd and 3rd fastest trial
    code, out, _ = run("pareto", "fmx", "--all", "--max-latency", f"{limit_ms * 1000:.9g}us")
    assert code == 0 and sorted(_table_trials(out)) == sorted(df[df["latency_ms"] <= limit_ms]["number"])
    assert len(_table_trials(out)) == 2
    code, out, _ = run("pareto", "fmx", "--max-latency", "1ns")
    assert code == 0 and _table_trials(out) == [] and "nearest is trial" in out


def test_bad_study_name_is_one_line_exit_2(real_db, run) -> None:
    code, out, err = run("pareto", "nope")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: study 'nope' not found")
    assert "fmx" in err  # lists the studies that exist
    code, _, err = run("export", "nope", "--knee", "-o", "x")
    assert code == 2 and err.startswith("error: study 'nope' not found")
    for args, msg in ((("pareto", "fmx", "--max-latency", "fast"), "cannot read 'fast'"),
                      (("pareto", "fmx", "--min-accuracy", "5"), "--min-accuracy: must be in [0, 1]"),
                      (("export", "fmx", "-o", "x"), "choose a trial with --trial N"),
                      (("export", "fmx", "--knee", "--format", "tflite", "-o", "x"), "unknown format 'tflite'"),
                      (("retarget", "fmx", "--device", "tpu"), "expected 'cpu' or 'cuda'")):
        code, _, err = run(*args)
        assert code == 2 and err.count("\n") == 1 and msg in err, (args, err)


def test_cascade_info_reads_a_cascade_folder(tmp_path) -> None:
    import yaml

    plan = {"stages": [{"name": "trial-2"}, {"name": "trial-0"}], "predicted_latency_ms": 0.05,
            "predicted_accuracy": 0.9}
    (tmp_path / "cascade.yaml").write_text(yaml.safe_dump({"format": "edgecompress.cascade", "plan": plan}))
    info = results_cli._cascade_info(tmp_path)
    assert info == [{"expected_latency_ms": 0.05, "accuracy": 0.9, "models": ["trial-2", "trial-0"],
                     "chosen": True}]
    with pytest.raises(Exception, match="no cascade.yaml plan"):
        results_cli._cascade_info(tmp_path / "missing")
    (tmp_path / "front.json").write_text("{not json")  # a damaged folder is bad input (one line), not a bug
    with pytest.raises(EdgeCompressError, match=r"unreadable front.json / cascade.yaml \(JSONDecodeError"):
        results_cli._cascade_info(tmp_path)


def test_report_and_export_commands(real_db, run, tmp_path) -> None:
    import yaml

    casc = tmp_path / "casc"
    casc.mkdir()
    plan = {"stages": [{"name": "a"}, {"name": "b"}], "predicted_latency_ms": 0.05, "predicted_accuracy": 0.9}
    (casc / "cascade.yaml").write_text(yaml.safe_dump({"plan": plan}))
    html = tmp_path / "r.html"
    code, out, err = run("report", "fmx", "-o", str(html), "--cascade", str(casc))
    assert code == 0, err
    assert str(html.resolve()) in out.replace("\n", "")
    assert html.stat().st_size > 100_000  # plotly.js embedded: works offline
    assert "Cascade: accuracy vs expected latency" in html.read_text()
    code, out, err = run("export", "fmx", "--max-latency", "1ns", "-o", str(tmp_path / "e1"))
    assert code == 1 and "nearest is trial" in err and not (tmp_path / "e1").exists(), (out, err)
    code, out, err = run("export", "fmx", "--knee", "--deployable", "--format", "onnx", "-o", str(tmp_path / "e2"))
    assert code == 0, err
    assert (tmp_path / "e2" / "model.onnx").is_file() and (tmp_path / "e2" / "config.yaml").is_file()
    assert "model.onnx" in out and "exported to" in out
    doc = yaml.safe_load((tmp_path / "e2" / "config.yaml").read_text())
    assert doc["metrics"]["latency_source"] == "measured"  # --deployable never ships an estimated latency
    gains = doc["gains_vs_uncompressed"]  # trial 0 is the enqueued uncompressed model
    assert gains["base_trial"] == 0 and gains["speedup_b1"] > 0 and "against the base (trial 0)" in out
    assert gains["accuracy_change_basis"].startswith(("paired, 200 val images", "the base itself"))


def _add_untrained_trial(study: optuna.Study) -> int:
    """A trial stopped before fine-tuning (no artefacts, no accuracy), as the search records it."""
    t = next(t for t in study.trials if t.user_attrs["w_bits"] == 32)
    attrs = {k: v for k, v in t.user_attrs.items() if k not in ("accuracy", "test_accuracy")}
    attrs.update(state_detail="infeasible", artefact_dir="/nonexistent/trial", violations={"max_macs": 5.0})
    study.add_trial(create_trial(values=[0.0, t.values[1]], params=t.params, distributions=t.distributions,
                                 user_attrs=attrs, constraints={"max_macs": 5.0}))
    return len(study.trials) - 1


def test_retarget_command_rechecks_constraints_and_pareto_reads_it(real_db, run) -> None:
    src = load_study(real_db.url)
    exp = dict(src.user_attrs["experiment"])
    exp["constraints"] = {**exp["constraints"], "max_latency_ms": 1e-6}  # nothing is this fast here
    src.set_user_attr("experiment", exp)
    untrained = _add_untrained_trial(src)
    (real_db.runs / "cache").symlink_to(real_db.template / "cache")  # the base model the study was built from
    code, out, err = run("retarget", "fmx", "--device", "cpu")
    assert code == 0, err
    assert "fmx-cpu" in out and (real_db.runs / "fmx-cpu.db").is_file()
    new = optuna.load_study(study_name="fmx-cpu", storage=f"sqlite:///{real_db.runs / 'fmx-cpu.db'}")
    df = study_to_frame(new)
    old = study_to_frame(src)
    assert len(df) == 4 and (df["state_detail"] == "infeasible").all() and not df["feasible"].any()
    assert (df["violation_max_latency_ms"] > 0).all() and (df["latency_ms"] > 0).all()
    assert df["accuracy"].tolist() == old["accuracy"].tolist()
    row = df[df["number"] == untrained].iloc[0]  # re-timed from the cached base model, still untrained
    assert row["violation_not_trained"] > 0 and row["violation_max_macs"] == 5.0
    assert row["latency_ms"] != old[old["number"] == untrained]["latency_ms"].iloc[0]
    code, out, err = run("pareto", "fmx-cpu")
    assert code == 0, err
    assert "0 feasible, 4 infeasible" in out
    assert "(infeasible)" in out
    code, _, err = run("retarget", "fmx", "--device", "cpu")
    assert code == 2 and "already exists" in err
