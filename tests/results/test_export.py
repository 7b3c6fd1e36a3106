"""Export of a real trial: checked ONNX/TorchScript files, reproducible config.yaml, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import edgecompress.export.trial_export as export_mod
from edgecompress.errors import ConfigError
from edgecompress.evaluators.compress import load_compressed
from edgecompress.export.checks import ExportError, ExportResult, ModelCheck, budget_check
from edgecompress.export.choice import choose_trial
from edgecompress.export.config_file import load_export_config
from edgecompress.export.trial_export import export_trial, parse_formats
from edgecompress.results.pareto import Selection
from edgecompress.spaces import CompressionConfig, parse_experiment
from edgecompress.study import load_study, study_to_frame


def _trial_with(df, w_bits: int) -> int:
    rows = df[(df["state"] == "COMPLETE") & (df["cfg_w_bits"] == w_bits)]
    assert len(rows), f"the real study has no {w_bits}-bit trial"
    return int(rows["number"].iloc[0])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated, still the portable format
def test_int8_trial_exports_checked_onnx_and_torchscript(real_db, tmp_path: Path) -> None:
    df = study_to_frame(load_study(real_db.url))
    n = _trial_with(df, 8)
    row = df[df["number"] == n].iloc[0]
    out = tmp_path / "out"
    res = export_trial(real_db.url, out, trial=n, data=real_db.data)
    assert res.ok and res.number == n
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.onnx", "model.torchscript.pt",
                                                     "model_int8.onnx"]
    checks = {c.name: c for c in res.checks}
    assert set(checks) == {"torchscript", "onnx", "onnx_int8"}
    for c in checks.values():
        assert c.latency_ms > 0 and c.latency_batch_ms > 0 and c.samples == 200
    assert checks["onnx"].agreement >= 0.99 and checks["torchscript"].agreement >= 0.99
    assert res.latency_check == "onnx_int8"  # the search's deploy form of an 8-bit trial

    # independently: ONNX Runtime on the written file vs the in-memory torch model, on validation images
    model, meta = load_compressed(Path(row["artefact_dir"]) / "model.pt")
    x = real_db.data.val.batch(torch.arange(100, 200), int(meta["input_size"]))
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert np.abs(got - ref).max() < 1e-3
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    with torch.no_grad():
        assert torch.allclose(scripted(x), torch.from_numpy(ref), atol=1e-4)

    cfg, doc = load_export_config(out)
    assert cfg == CompressionConfig.from_dict(row["config"])  # round-trips to the trial's config
    assert doc["trial"] == n and doc["format_version"] == 2
    exp = parse_experiment(doc["experiment"])
    assert doc["base_model"]["key"] == exp.base_key() and doc["seed"] == exp.seed
    assert doc["metrics"]["accuracy"] == pytest.approx(row["accuracy"])
    assert set(doc["versions"]) >= {"torch", "onnxruntime", "edgecompress"}
    assert doc["input"]["size"] == meta["input_size"] and doc["files"]["model.onnx"]["bytes"] > 0
    assert not list(tmp_path.glob(".out.*"))  # staging folder gone

    # config.yaml states the loader's preprocessing; the stated steps, run on the stored images, give its input
    pre = doc["input"]["preprocess"]
    assert pre["dataset"] == "fashion_mnist" and pre["size"] == meta["input_size"]
    assert [s["op"] for s in pre["steps"]] == ["decode", "to_float", "resize", "normalize", "layout"]
    assert any("antialias" in w for w in pre["words"]) and doc["input"]["mean"] == [0.286]
    pc = res.preprocess_check
    assert pc.passed and pc.samples == 200 and pc.max_input_diff < 1e-4 and pc.agreement == 1.0
    assert pc.stated_accuracy == pc.loader_accuracy and pc.study_accuracy == pytest.approx(row["accuracy"])
    assert doc["preprocess_check"]["passed"] is True


def test_int8_file_is_calibrated_on_the_evaluators_batches(real_db, tmp_path: Path, monkeypatch) -> None:
    from edgecompress.evaluators.evaluator import CompressionEvaluator
    from edgecompress.study.attrs import study_experiment

    df = study_to_frame(load_study(real_db.url))
    n = _trial_with(df, 8)
    seen: list[tuple[int, list[torch.Tensor]]] = []

    class Stop(Exception):
        pass

    def capture(model, example, **kw):  # noqa: ANN001, ANN202 - the export's int8 deploy call
        seen.append((int(example.shape[-1]), list(kw["calib_batches"])))
        raise Stop

    monkeypatch.setattr(export_mod, "deploy", capture)
    with pytest.raises(Stop):
        export_trial(real_db.url, tmp_path / "out", trial=n, data=real_db.data, formats="onnx")
    (size, calib), = seen
    ev = CompressionEvaluator(study_experiment(load_study(real_db.url)), data=real_db.data)
    expected = ev.calib_batches(size)  # what the search calibrated this trial's int8 latency model on
    assert len(calib) == len(expected) == 8
    for got, want in zip(calib, expected, strict=True):
        assert torch.equal(got, want)


def test_interrupted_export_leaves_no_final_file(real_db, tmp_path: Path, monkeypatch) -> None:
    df = study_to_frame(load_study(real_db.url))
    n = _trial_with(df, 32)
    seen: list[Path] = []

    def crash(model, example, path, exporter="legacy"):
        Path(path).write_bytes(b"half an onnx file")  # the temp file exists, then the process dies
        seen.append(Path(path))
        raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "export_onnx", crash)
    parent = tmp_path / "exports"
    out = parent / "exp"
    with pytest.raises(KeyboardInterrupt):
        export_trial(real_db.url, out, trial=n, data=real_db.data)
    assert seen and seen[0].name == "model.onnx" and not seen[0].exists()  # temp file removed
    assert not out.exists()
    assert list(parent.iterdir()) == []  # no staging leftovers


def test_interrupted_reexport_keeps_the_previous_export(real_db, tmp_path: Path, monkeypatch) -> None:
    df = study_to_frame(load_study(real_db.url))
    n = _trial_with(df, 32)
    out = tmp_path / "exp"
    export_trial(real_db.url, out, trial=n, data=real_db.data, formats="yaml")
    before = (out / "config.yaml").read_text()
    monkeypatch.setattr(export_mod, "export_onnx", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        export_trial(real_db.url, out, trial=n, data=real_db.data, formats="onnx")
    assert (out / "config.yaml").read_text() == before and sorted(p.name for p in out.iterdir()) == ["config.yaml"]


def test_infeasible_budget_refuses_then_force_exports(real_db, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"nearest is trial \d+, missing max_latency_ms"):
        export_trial(real_db.url, tmp_path / "a", max_latency=1e-6, data=real_db.data)
    assert not (tmp_path / "a").exists()
    res = export_trial(real_db.url, tmp_path / "b", max_latency=1e-6, data=real_db.data, force=True,
                       formats="yaml")
    assert res.forced and not res.selection.feasible and res.problems
    _, doc = load_export_config(tmp_path / "b")
    assert doc["problems"] and doc["selection"]["feasible"] is False


def test_choose_trial_rules(real_db) -> None:
    df = study_to_frame(load_study(real_db.url))
    best = df.loc[df["accuracy"].idxmax(), "number"]
    assert choose_trial(df, max_latency=1e9).number == best
    fastest = df.loc[df["latency_ms"].idxmin()]
    assert choose_trial(df, min_accuracy=0.0).number == fastest["number"]
    assert choose_trial(df, knee=True).number in set(df["number"])
    with pytest.raises(ConfigError, match="choose a trial with `trial` N"):
        choose_trial(df)
    with pytest.raises(Exception, match="no trial 99"):
        choose_trial(df, trial=99)


def test_budget_check_uses_the_deploy_form_and_flags_a_slow_file() -> None:
    def check(name: str, lat: float) -> ModelCheck:
        return ModelCheck(name, name, "fp32", 10, 1.0, 0.0, 0.99, lat, lat, lat, 8, "measured", True)

    res = ExportResult(Path("x"), "s", 1, Selection(1, True, {}), CompressionConfig(w_bits=8, a_bits=8),
                       checks=[check("onnx", 0.5), check("onnx_int8", 3.0)], max_latency_ms=2.0)
    budget_check(res, parse_experiment({}), res.config)
    assert res.latency_check == "onnx_int8" and "over the budget of 2 ms" in res.problems[0]


def test_parse_formats() -> None:
    assert parse_formats("onnx, torchscript,onnx") == ("onnx", "torchscript")
    with pytest.raises(ValueError, match="unknown format 'tflite'"):
        parse_formats("onnx,tflite")


def test_refuses_to_overwrite_a_folder_that_is_not_an_export(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="refusing to overwrite"):
        export_trial("any-study", tmp_path / "mine", trial=0)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_preprocess_needs_the_onnx_format(real_db, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="`preprocess` .* needs the onnx format in `formats`"):
        export_trial(real_db.url, tmp_path / "out", trial=0, data=real_db.data, formats="torchscript",
                     preprocess=True)


def test_a_stated_preprocessing_that_is_wrong_fails_the_export(real_db, tmp_path: Path) -> None:
    import dataclasses

    df = study_to_frame(load_study(real_db.url))
    n = _trial_with(df, 32)
    wrong = dataclasses.replace(real_db.data.preprocess, mean=(0.5,))  # says something the loader does not do
    data = dataclasses.replace(real_db.data, preprocess=wrong)
    with pytest.raises(ExportError, match="stated preprocessing does not reproduce the loader's input") as e:
        export_trial(real_db.url, tmp_path / "out", trial=n, data=data, formats="yaml")
    assert e.value.result.preprocess_check.max_input_diff > 0.5
    assert not (tmp_path / "out").exists()


def test_preprocess_onnx_of_an_idx_dataset_takes_stored_uint8_images(real_db, tmp_path: Path) -> None:
    df = study_to_frame(load_study(real_db.url))
    n = _trial_with(df, 8)
    out = tmp_path / "out"
    res = export_trial(real_db.url, out, trial=n, data=real_db.data, formats="onnx", preprocess=True)
    checks = {c.name: c for c in res.checks}
    assert set(checks) == {"onnx", "onnx_int8", "onnx_preprocess", "onnx_int8_preprocess"}
    assert checks["onnx_preprocess"].passed and checks["onnx_preprocess"].agreement >= 0.99
    _, doc = load_export_config(out)
    assert doc["input"]["preprocessed_onnx"]["shape"] == ["N", "H", "W", 1]
    size = doc["input"]["size"]
    imgs = real_db.data.val.images[:64].permute(0, 2, 3, 1).numpy()  # the stored 28 x 28 pixels, N x H x W x 1
    sess = ort.InferenceSession(str(out / "model_preprocess.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": imgs})[0]
    model, _ = load_compressed(Path(df[df["number"] == n].iloc[0]["artefact_dir"]) / "model.pt")
    with torch.no_grad():
        ref = model(real_db.data.val.batch(torch.arange(64), size)).numpy()
    assert np.abs(got - ref).max() < 1e-3 and size != 28  # the graph resizes 28 -> size as the loader does
