"""Locations resolved once by the driver: the runs folder and the artefact store are absolute, a Ray trial
running in another working folder uses them (not a fresh relative `runs`), the base-model cache lives in the
store, and the Ray driver never records a complete trial whose artefacts it cannot see."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import optuna
from optuna.trial import TrialState

from edgecompress.evaluators.base_model import base_dir
from edgecompress.search.objective import link_artefacts, same_store
from edgecompress.utils import Locations, artefacts_dir, cache_dir, runs_dir


def test_locations_are_absolute_and_restored(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGECOMPRESS_RUNS", "runs")  # relative, as by default
    monkeypatch.delenv("EDGECOMPRESS_ARTEFACTS", raising=False)
    locs = Locations.resolve("store")
    assert locs.runs == str(tmp_path / "runs") and locs.artefacts == str(tmp_path / "store")
    with locs.applied():
        assert runs_dir() == tmp_path / "runs" and artefacts_dir() == tmp_path / "store"
        assert cache_dir() == tmp_path / "store" / "cache"
    assert os.environ["EDGECOMPRESS_RUNS"] == "runs" and "EDGECOMPRESS_ARTEFACTS" not in os.environ


def test_ray_trial_uses_the_drivers_locations_from_its_own_working_folder(fakes, tmp_path: Path, monkeypatch) -> None:
    from ray import tune

    from edgecompress.search.ray_runner import _trainable_factory
    from edgecompress.search.study_setup import space_for

    exp = fakes.small_experiment()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGECOMPRESS_RUNS", "runs")  # the default: relative to the driver's folder
    locs = Locations.resolve(tmp_path / "store")
    seen: dict[str, Path] = {}

    class Probe(fakes.FakeEvaluator):
        def __call__(self, config, artefact_dir=None, on_epoch=None):  # noqa: ANN001, ANN204
            seen.update(runs=runs_dir(), base=base_dir(exp), out=Path(artefact_dir))
            return super().__call__(config, artefact_dir, None)

    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: reports.append(dict(metrics)))
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t0"))
    trainable = _trainable_factory(exp, space_for(exp), f"sqlite:///{tmp_path}/none.db", "s",
                                   Path(locs.artefacts) / "s", Probe(tmp_path / "calls.log"), None, locs)
    trial_wd = tmp_path / "ray-session" / "working_dirs" / "t0"
    trial_wd.mkdir(parents=True)
    monkeypatch.chdir(trial_wd)  # where Ray runs a trial
    monkeypatch.setenv("EDGECOMPRESS_RUNS", "runs")  # what a Ray worker process would otherwise see
    trainable({"prune": 0.25, "depth": 1.0, "w_bits": 8, "resolution": 1.0})
    assert seen["runs"] == tmp_path / "runs"  # not trial_wd / "runs"
    assert seen["base"].parent == tmp_path / "store" / "cache"
    assert seen["out"] == tmp_path / "store" / "s" / "ray" / "t0"
    assert not (trial_wd / "runs").exists()


def test_ray_driver_fails_a_complete_trial_whose_artefacts_it_cannot_see(fakes, tmp_path: Path) -> None:
    from edgecompress.evaluators.result import EvalResult
    from edgecompress.search.ray_writer import StudyWriter
    from edgecompress.search.study_setup import space_for

    exp = fakes.small_experiment()
    space = space_for(exp)
    study = optuna.create_study(directions=["maximize", "minimize"])
    writer = StudyWriter(study, exp, space, tmp_path / "study", lambda: None)
    params = {"prune": 0.25, "depth": 1.0, "w_bits": 8, "resolution": 1.0}
    config = space.from_params(params)
    metrics = fakes.fake_metrics(config)
    result = {"accuracy": metrics["accuracy"], "latency_ms": metrics["latency_ms"],
              "ec_result": EvalResult(config=config, metrics=metrics).to_dict(),
              "ec_artefacts": "/elsewhere/on/another/node/t1", "ec_node": "node-b", "ec_resources": {"CPU": 1.0}}
    writer.write(params, result, "t1")
    (t,) = study.trials
    assert t.state == TrialState.FAIL
    assert "not visible to the driver" in t.user_attrs["fail_reason"] and "--artefacts" in t.user_attrs["fail_reason"]
    assert t.user_attrs["ray_node"] == "node-b"


def test_cache_links_within_a_store_and_copies_across_stores(tmp_path: Path) -> None:
    src = tmp_path / "a" / "s" / "trials" / "0"
    src.mkdir(parents=True)
    (src / "model.pt").write_bytes(b"weights")
    same, other = tmp_path / "a" / "s" / "trials" / "1", tmp_path / "b" / "s" / "trials" / "1"
    assert same_store(src, same) and not same_store(src, other)
    link_artefacts(src, same, link=same_store(src, same))
    link_artefacts(src, other, link=same_store(src, other))
    assert (same / "model.pt").stat().st_ino == (src / "model.pt").stat().st_ino
    assert (other / "model.pt").stat().st_ino != (src / "model.pt").stat().st_ino
    assert (other / "model.pt").read_bytes() == b"weights"
