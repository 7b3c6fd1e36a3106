"""An fsspec URL as the artefact store (study.artefact_store): uploads with a completion marker (a half upload
is never used), trials that record `artefact_uri`, and readers (the config-hash cache, export, the Ray
driver) that fetch from the store when the trial's own folder is gone. The store is a `file://` URL into a
folder that is not the runs folder, so the code takes the fsspec path, not the folder one."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from edgecompress.evaluators.result import ARTEFACT_FILES, EvalResult
from edgecompress.export.trial_export import trial_model_path
from edgecompress.search import run_search
from edgecompress.search.study_setup import space_for
from edgecompress.study import artefact_store, load_study, study_to_frame
from edgecompress.utils import Locations, artefacts_dir

POINT = {"prune": 0.25, "depth": 1.0, "w_bits": 8, "resolution": 1.0}


@pytest.fixture
def store(tmp_path: Path, runs: Path) -> str:
    folder = tmp_path / "objstore"
    assert not folder.is_relative_to(runs)
    return f"file://{folder}"


def test_upload_is_used_only_once_complete(tmp_path: Path, store: str, runs: Path, fakes) -> None:
    src = tmp_path / "trial"
    fakes.write_fake_artefacts(src, space_for(fakes.small_experiment()).from_params(POINT))
    uri = artefact_store.trial_uri(store, "s", 0)
    half = Path(uri.removeprefix("file://"))
    half.mkdir(parents=True)
    shutil.copy(src / ARTEFACT_FILES["model"], half / ARTEFACT_FILES["model"])  # files, no marker yet
    assert artefact_store.manifest(uri) is None and artefact_store.fetch(uri) is None
    assert not artefact_store.available({"artefact_dir": str(tmp_path / "gone"), "artefact_uri": uri})
    assert artefact_store.upload(src, uri) == uri
    assert set(artefact_store.manifest(uri)) == {p.name for p in src.iterdir()}
    got = artefact_store.fetch(uri)
    assert got is not None and got.is_relative_to(runs / "store-cache")
    assert (got / ARTEFACT_FILES["model"]).read_bytes() == (src / ARTEFACT_FILES["model"]).read_bytes()
    (half / ARTEFACT_FILES["val_logits"]).unlink()  # a file lost after the marker: not used either
    shutil.rmtree(got)
    assert artefact_store.fetch(uri) is None
    mem = artefact_store.upload(src, "memory://ec-test/s/trials/0")  # any fsspec protocol
    assert artefact_store.fetch(mem, cache=tmp_path / "mem") == tmp_path / "mem"
    with pytest.raises(Exception, match="artefact store nosuchproto://x"):
        artefact_store.upload(src, "nosuchproto://x")


def test_url_store_keeps_trial_folders_local_and_uploads_them(tmp_path: Path, store: str, runs: Path,
                                                               monkeypatch, fakes) -> None:
    monkeypatch.chdir(tmp_path)
    locs = Locations.resolve(store)
    assert locs.artefacts == store  # a URL is kept as given; trials then write under the runs folder
    with locs.applied():
        assert artefacts_dir() == runs and artefact_store.store_url() == store
    ev = fakes.FakeEvaluator(tmp_path / "calls.log")
    exp = fakes.small_experiment(budget={"sampler": "random", "enqueue_uncompressed": False},
                                 space={"prune": {"low": 0.0, "high": 0.7}})
    run_search(exp, "u", trials=2, evaluator=ev, artefacts=store)
    trials = load_study("u").trials
    for t in trials:
        assert Path(t.user_attrs["artefact_dir"]) == runs / "u" / "trials" / str(t.number)
        assert t.user_attrs["artefact_uri"] == f"{store}/u/trials/{t.number}"
        assert ARTEFACT_FILES["model"] in artefact_store.manifest(t.user_attrs["artefact_uri"])
    shutil.rmtree(runs / "u")  # the workers' local folders are gone (another machine, cleaned up)
    first = trials[0]
    row = study_to_frame(load_study("u")).set_index("number").loc[first.number]
    model = trial_model_path(row, first.number)  # export reads the model from the store
    assert model.is_file() and model.is_relative_to(runs / "store-cache")

    # the config-hash cache serves a config from the store's copy
    study = load_study("u")
    study.enqueue_trial(first.params)
    run_search(exp, "u", trials=3, evaluator=ev, artefacts=store)
    again = load_study("u").trials[2]
    assert again.state == TrialState.COMPLETE and again.user_attrs["cached_from"] == first.number
    assert len(ev.calls()) == 2  # not trained again
    assert again.user_attrs["artefact_uri"] == first.user_attrs["artefact_uri"]
    assert (Path(again.user_attrs["artefact_dir"]) / ARTEFACT_FILES["val_logits"]).is_file()


def test_ray_driver_takes_artefacts_from_the_store_when_it_cannot_see_them(tmp_path: Path, store: str, runs: Path,
                                                                          monkeypatch, fakes) -> None:
    from edgecompress.search.ray_artefacts import upload_trial_output
    from edgecompress.search.ray_writer import StudyWriter

    monkeypatch.setenv("EDGECOMPRESS_ARTEFACTS", store)
    exp = fakes.small_experiment()
    space = space_for(exp)
    config = space.from_params(POINT)
    node_out = tmp_path / "node-b" / "ray" / "t1"  # the trial's folder on a node the driver cannot see
    fakes.write_fake_artefacts(node_out, config)
    upload = upload_trial_output(node_out, "rs", "t1")
    shutil.rmtree(tmp_path / "node-b")
    study = optuna.create_study(study_name="rs", directions=["maximize", "minimize"])
    writer = StudyWriter(study, exp, space, runs / "rs", lambda: None)
    metrics = fakes.fake_metrics(config)
    writer.write(POINT, {"accuracy": metrics["accuracy"], "latency_ms": metrics["latency_ms"],
                         "ec_result": EvalResult(config=config, metrics=metrics).to_dict(),
                         "ec_artefacts": str(node_out), "ec_node": "node-b", **upload}, "t1")
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE, t.user_attrs.get("fail_reason")
    assert t.user_attrs["artefact_uri"] == f"{store}/rs/trials/0"
    assert {ARTEFACT_FILES["model"], ARTEFACT_FILES["metrics"]} <= set(artefact_store.manifest(f"{store}/rs/trials/0"))
    assert artefact_store.manifest(upload["ec_artefact_uri"]) is None  # the per-trial-id upload is dropped
    assert (Path(t.user_attrs["artefact_dir"]) / ARTEFACT_FILES["model"]).is_file()

    # neither visible nor uploaded: FAIL with the reason, never COMPLETE without a model
    writer.write({**POINT, "prune": 0.5}, {"accuracy": 0.5, "latency_ms": 0.1, "ec_node": "node-c",
                                            "ec_result": EvalResult(config=config, metrics=metrics).to_dict(),
                                            "ec_artefacts": "/nowhere/t2", "ec_artefact_uri": None}, "t2")
    failed = study.trials[1]
    assert failed.state == TrialState.FAIL and "upload failed" in failed.user_attrs["fail_reason"]
