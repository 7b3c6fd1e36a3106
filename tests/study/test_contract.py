"""The study contract: one front for every command, named objectives (Optuna, optuna-dashboard), the constraint
table, the top-level API and the layer contracts."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import wsgiref.util
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from edgecompress.spaces import parse_experiment
from edgecompress.spaces.constraint_table import CONSTRAINTS, Constraints
from edgecompress.study import active_constraints, constraint_values, front, study_to_frame, violations

ROOT = Path(__file__).resolve().parents[2]
# number: (accuracy, latency_ms); None = FAIL. Trials 2 and 4 have identical values: both are on the front.
TRIALS = {0: (0.95, 3.0), 1: (0.92, 1.5), 2: (0.90, 1.0), 3: (0.91, 1.8), 4: (0.90, 1.0), 5: (0.85, 0.5), 6: None}
FRONT = [5, 2, 4, 1, 0]  # by latency, then number


def _make_study(folder: Path) -> optuna.Study:
    """A study made the search's way (create_or_load_study), trials with artefacts a cascade can read."""
    from edgecompress.search.study_setup import create_or_load_study
    from edgecompress.study import make_storage

    exp = parse_experiment({"name": "contract"})
    study, fresh = create_or_load_study(exp, "contract", make_storage(f"sqlite:///{folder / 'contract.db'}"))
    assert fresh
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    for n, spec in TRIALS.items():
        params, dists = {"prune": 0.1 * n}, {"prune": FloatDistribution(0.0, 1.0)}
        if spec is None:
            study.add_trial(create_trial(state=TrialState.FAIL, params=params, distributions=dists,
                                         user_attrs={"state_detail": "failed", "fail_reason": "boom"}))
            continue
        acc, lat = spec
        art = folder / "trials" / str(n)
        art.mkdir(parents=True)
        logits = rng.standard_normal((200, 10)).astype(np.float32)
        logits[np.arange(200), labels] += 4 * acc  # roughly `acc` accurate
        np.save(art / "val_logits.npy", logits)
        np.save(art / "val_labels.npy", labels)
        study.add_trial(create_trial(
            values=[acc, lat], params=params, distributions=dists,
            user_attrs={"accuracy": acc, "latency_ms": lat, "latency_source": "measured", "input_size": 28,
                        "latency_batch_ms": lat * 20, "batch_size": 64, "precision": "fp32",
                        "config": {"prune": 0.1 * n}, "state_detail": "complete", "artefact_dir": str(art)}))
    return study


@pytest.fixture
def contract_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> optuna.Study:
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path))
    return _make_study(tmp_path)


def test_one_front_in_search_summary_pareto_report_and_cascade(contract_study: optuna.Study) -> None:
    from edgecompress.cascade.pipeline.study_candidates import study_candidates
    from edgecompress.cli.tables import front_rows as pareto_rows
    from edgecompress.results.report import _get_report_info
    from edgecompress.search.optuna_runner import front_rows as summary_rows
    from edgecompress.search.progress import study_stats

    study = contract_study
    assert [int(n) for n in front(study)["number"]] == FRONT
    assert [r["number"] for r in summary_rows(study)] == FRONT  # `search` summary table
    assert study_stats(study).front == FRONT  # live progress line
    assert [r["trial"] for r in pareto_rows(study_to_frame(study))] == FRONT  # `edgecompress pareto`
    assert _get_report_info(study)["front_numbers"] == FRONT  # the report
    cands, _, _ = study_candidates(study)
    assert [c.number for c in cands] == FRONT  # the cascade's candidates
    # the same rule as Optuna's own best_trials (duplicates included)
    assert sorted(t.number for t in study.best_trials) == sorted(FRONT)


def test_deployable_and_feasible_fronts_are_computed_over_their_trials(contract_study: optuna.Study) -> None:
    df = study_to_frame(contract_study)
    # pretend trial 5 was sub-8-bit: its latency is an estimate, so the deployable front is recomputed
    df.loc[df["number"] == 5, "latency_source"] = "estimated"
    assert [int(n) for n in front(df)["number"]] == FRONT
    assert [int(n) for n in front(df, deployable=True)["number"]] == [2, 4, 1, 0]
    # no trial feasible: Deb's rule gives the least-violating ones, feasible_only gives none
    df["feasible"], df["total_violation"] = False, 1.0
    df.loc[df["number"] == 3, "total_violation"] = 0.5
    assert [int(n) for n in front(df)["number"]] == [3]
    assert front(df, feasible_only=True).empty


def test_objective_names_are_optuna_metric_names_and_the_dashboard_shows_them(contract_study: optuna.Study,
                                                                             tmp_path: Path) -> None:
    from optuna_dashboard import wsgi

    study = contract_study
    assert study.metric_names == ["accuracy", "latency_ms"]
    assert list(study.trials_dataframe().columns).count("values_accuracy") == 1  # Optuna's own frame
    url = f"sqlite:///{tmp_path / 'contract.db'}"
    storage = optuna.storages.RDBStorage(url)
    study_id = storage.get_study_id_from_name("contract")
    app = wsgi(storage)
    environ: dict = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ["PATH_INFO"] = f"/api/studies/{study_id}"
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
    assert status[0].startswith("200"), status
    detail = json.loads(body)
    assert detail["objective_names"] == ["accuracy", "latency_ms"]
    assert sorted(t["number"] for t in detail["best_trials"]) == sorted(FRONT)


def test_constraint_table_drives_schema_checks_and_recorded_values() -> None:
    assert set(Constraints.model_fields) == set(CONSTRAINTS)
    exp = parse_experiment({"constraints": {"max_latency_ms": 1.0, "min_accuracy": 0.9, "max_macs": 5e6}})
    assert active_constraints(exp.constraints) == {"max_latency_ms": 1.0, "min_accuracy": 0.9, "max_macs": 5e6}
    metrics = {"latency_ms": 1.5, "macs": 1e6, "accuracy": 0.8}
    assert violations(metrics, exp.constraints, "pre") == {"max_latency_ms": 0.5, "max_macs": -4e6}  # no accuracy
    post = violations(metrics, exp.constraints, "post")
    assert post == pytest.approx({"max_latency_ms": 0.5, "max_macs": -4e6, "min_accuracy": 0.1})
    assert constraint_values(exp.constraints, metrics, {"max_latency_ms": 0.25})["max_latency_ms"] == 0.25
    with pytest.raises(Exception, match="unknown key"):
        parse_experiment({"constraints": {"max_watts": 3}})


def test_top_level_api_is_complete_and_light() -> None:
    code = ("import sys, edgecompress as ec; assert 'torch' not in sys.modules, 'import edgecompress loads torch'; "
            "missing = [n for n in ec.__all__ if getattr(ec, n, None) is None]; assert not missing, missing; "
            "print(len(ec.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    import edgecompress

    for verb in ("load_experiment", "run_search", "load_study", "study_to_frame", "front", "select", "knee_point",
                 "export_trial", "build_cascade", "cascade_from_study", "load_cascade"):
        assert verb in edgecompress.__all__, verb


def _private_imports(package: Path) -> list[str]:
    """`from edgecompress.x import _name` and `module._name` on an imported edgecompress module, across modules."""
    found = []

    def is_module(dotted: str) -> bool:
        rel = Path(*dotted.split("."))
        return (package.parent / rel).with_suffix(".py").is_file() or (package.parent / rel / "__init__.py").is_file()

    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        modules: set[str] = set()  # local names bound to edgecompress modules
        where = path.relative_to(package.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgecompress"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{where}: {node.module}.{a.name}")
                    if is_module(f"{node.module}.{a.name}"):
                        modules.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                modules |= {a.asname for a in node.names if a.name.startswith("edgecompress") and a.asname}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    assert _private_imports(ROOT / "edgecompress") == []


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], capture_output=True, text=True, cwd=root, timeout=300,
                          env={"PATH": str(exe.parent), "PYTHONPATH": str(root)})


def test_layer_contracts_pass_and_catch_an_upward_import(tmp_path: Path) -> None:
    ok = _lint_imports(ROOT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 broken" in ok.stdout and " kept, " in ok.stdout
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "edgecompress", copy / "edgecompress", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    # a study-layer module reaching up into results: the contract must break
    (copy / "edgecompress" / "study" / "upward.py").write_text("from edgecompress.results import select  # noqa\n")
    broken = _lint_imports(copy)
    assert broken.returncode != 0
    assert "edgecompress.study.upward -> edgecompress.results" in broken.stdout
