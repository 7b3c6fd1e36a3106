"""Retarget: latency re-measured on this device into a new study; accuracies unchanged, no retraining."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

import edgecompress.evaluators.evaluator as ev_mod
from edgecompress.export.retarget import retarget_study
from edgecompress.results import pareto_front
from edgecompress.study import load_study, study_to_frame


def test_retarget_keeps_accuracy_and_remeasures_latency(real_db, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(ev_mod, "train_model", lambda *a, **k: pytest.fail("retarget must not train"))
    src = study_to_frame(load_study(real_db.url))
    new_url = f"sqlite:///{tmp_path / 'new.db'}"
    summary = retarget_study(real_db.url, device="cpu", backend="onnxruntime", new_study="fmx-b",
                             new_storage=new_url, data=real_db.data, threads=1)
    assert summary.study == "fmx-b" and not summary.skipped
    new = optuna.load_study(study_name="fmx-b", storage=new_url)
    df = study_to_frame(new)
    assert df.attrs["objectives"] == src.attrs["objectives"]
    assert list(df["number"]) == list(src["number"])
    merged = src.merge(df, on="number", suffixes=("_old", "_new"))
    assert (merged["accuracy_old"] == merged["accuracy_new"]).all()
    assert (merged["config_hash_old"] == merged["config_hash_new"]).all()
    assert (merged["latency_ms_new"] > 0).all() and (merged["latency_batch_ms_new"] > 0).all()
    assert (merged["threads_new"] == 1).all() and (merged["threads_old"] == 2).all()  # really re-measured
    assert (merged["latency_source_old"] == merged["latency_source_new"]).all()  # 4-bit stays "estimated"
    for t in new.trials:  # values follow the objectives' order
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["latency_ms"]]
        assert t.user_attrs["retargeted_from"]["study"] == "fmx"
    est = df[df["latency_source"] == "estimated"]
    assert len(est) and est["latency_note"].str.contains("estimated").all()
    assert len(pareto_front(df)) >= 1
    assert load_study(real_db.url).study_name == "fmx" and len(optuna.get_all_study_names(real_db.url)) == 1
    with pytest.raises(Exception, match="already exists"):  # checked before any measurement
        retarget_study(real_db.url, device="cpu", new_study="fmx-b", new_storage=new_url, data=real_db.data)


TINY = {
    "dataset": {"train_subset": 256, "val_subset": 64, "test_subset": 64},
    "model": {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}},
    "device": {"device": "cpu", "threads": 1, "batch_size": 8},
    "constraints": {"max_latency_ms": 1e-9},  # the evaluator stops after measuring: no fine-tune
}
FALLBACK = "fp32 (int8 unsupported on torch cuda)"  # what torch on CUDA deploys for int8


@pytest.mark.parametrize("falls_back", [True, False], ids=["fp32-fallback", "int8"])
def test_sub8bit_estimate_equals_the_evaluators(falls_back: bool, monkeypatch) -> None:
    """Retarget re-measures a 4-bit trial with the evaluator's estimate, from the precision it really deployed at."""
    import edgecompress.evaluators.served as served_mod
    import edgecompress.export.retarget as retarget_mod
    import edgecompress.runtime.backend as deploy_mod
    from edgecompress.evaluators.base_model import BaseModel
    from edgecompress.evaluators.compress import compress_model
    from edgecompress.evaluators.data import load_data
    from edgecompress.evaluators.evaluator import CompressionEvaluator
    from edgecompress.evaluators.models import create_model
    from edgecompress.runtime.sub8bit import SCALED_LATENCY_KEYS
    from edgecompress.spaces import CompressionConfig, parse_experiment

    real_deploy = deploy_mod.deploy

    def int8_falls_back(model, example, **kw):  # noqa: ANN001, ANN202
        if kw.get("precision") != "int8":
            return real_deploy(model, example, **kw)
        dep = real_deploy(model, example, **{**kw, "precision": "fp32", "calib_batches": None})
        dep.precision = FALLBACK
        return dep

    def fixed_latency(self, dep, size):  # noqa: ANN001, ANN202 - a measurement without timing noise
        m = {k: 16.0 if k.startswith("latency_batch") else 2.5 for k in SCALED_LATENCY_KEYS}
        return {**m, "latency_ms": 2.0, "latency_p90_ms": 2.4, "latency_mean_ms": 2.2, "latency_batch_ms": 16.0,
                "latency_batch_p90_ms": 18.0, "device_name": "test cpu", "precision": dep.precision,
                "size_bytes": 64_000}

    if falls_back:
        monkeypatch.setattr(ev_mod, "deploy", int8_falls_back)
        monkeypatch.setattr(served_mod, "deploy", int8_falls_back)  # the one served form of evaluator and retarget
    monkeypatch.setattr(CompressionEvaluator, "measure_latency", fixed_latency)
    monkeypatch.setattr(ev_mod, "train_model", lambda *a, **k: pytest.fail("no fine-tune expected"))
    exp = parse_experiment(TINY)
    data = load_data(exp.dataset, exp.seed)
    net = create_model("resnet8", num_classes=10, in_chans=1, widths=(8, 16, 32)).eval()
    cfg = CompressionConfig(w_bits=4, a_bits=4, prune=0.25)
    ev = CompressionEvaluator(exp, data=data, base=BaseModel(net, {}, "untrained", Path("unused"), reused=True))
    res = ev(cfg)
    assert res.state == "infeasible", res.fail_reason
    size = res.metrics["input_size"]
    model, _ = compress_model(net, cfg, torch.randn(1, data.in_chans, size, size))
    re = retarget_mod._Remeasurer(exp, data).measure(model, cfg, size)  # what retarget_study records

    base_bits = 32 if falls_back else 8
    assert res.metrics["precision"] == re["precision"]
    assert re["precision"] == FALLBACK if falls_back else re["precision"].startswith("int8")
    assert res.metrics["latency_ms"] == pytest.approx(2.0 * 4 * 4 / base_bits**2)
    assert res.metrics["size_bytes"] == 64_000 * 4 // base_bits
    for key in (*SCALED_LATENCY_KEYS, "latency_source", "latency_note", "size_bytes"):
        assert re[key] == res.metrics[key], key
    assert re["latency_source"] == "estimated"
    assert f"from the {'fp32' if falls_back else 'int8'} model measured on test cpu" in re["latency_note"]


def test_remeasure_front_quietly_into_a_new_study(real_db, tmp_path, monkeypatch) -> None:
    """`remeasure`: the study's own device/backend/threads, the search's protocol, only the front."""
    from edgecompress.export.retarget import front_numbers, remeasure_study

    monkeypatch.setattr(ev_mod, "train_model", lambda *a, **k: pytest.fail("remeasure must not train"))
    src = load_study(real_db.url)
    front = front_numbers(real_db.url)
    assert 1 <= len(front) <= len(src.trials)
    new_url = f"sqlite:///{tmp_path / 'quiet.db'}"
    summary = remeasure_study(real_db.url, front_only=True, new_storage=new_url, data=real_db.data)
    assert summary.study == "fmx-remeasured" and summary.left_out == len(src.trials) - len(front)
    assert sorted(t.source_number for t in summary.trials) == sorted(front)
    new = optuna.load_study(study_name="fmx-remeasured", storage=new_url)
    assert len(new.trials) == len(front)
    old = {t.number: t.user_attrs for t in src.trials}
    for t in new.trials:
        a, o = t.user_attrs, old[t.user_attrs["retargeted_from"]["trial"]]
        assert a["accuracy"] == o["accuracy"]
        assert a["threads"] == o["threads"] and a["backend"] == o["backend"]  # the study's own device
        assert "drift-corrected" in a["latency_protocol"] and a["latency_exclusive"] is True
        assert a["latency_ms"] == pytest.approx(a["latency_ratio"] * a["latency_ref_study_ms"])
        assert a["latency_ms"] > 0 and a["latency_source"] == o["latency_source"]
    assert new.user_attrs["retargeted_from"]["how"] == "remeasured"


def test_remeasure_command(real_db, capsys) -> None:
    from edgecompress.cli import main

    main(["remeasure", "fmx", "--front", "--new-study", "fmx-quiet"])
    out = capsys.readouterr().out
    assert "fmx -> fmx-quiet" in out and "edgecompress pareto fmx-quiet" in out
    assert (real_db.runs / "fmx-quiet.db").is_file()


def test_remeasure_on_one_thread(real_db, capsys) -> None:
    """`remeasure --latency-threads 1`: the trials are timed on one thread (recorded), the new study's
    experiment says so, the source study's thread count is left as it was."""
    from edgecompress.cli import main
    from edgecompress.study.attrs import study_experiment

    src = load_study(real_db.url)
    assert {t.user_attrs["threads"] for t in src.trials if "threads" in t.user_attrs} != {1}
    main(["remeasure", "fmx", "--front", "--new-study", "fmx-one", "--latency-threads", "1"])
    new = load_study(str(real_db.runs / "fmx-one.db"))
    assert new.trials and {t.user_attrs["threads"] for t in new.trials} == {1}
    assert study_experiment(new).device.latency_threads == 1
    assert study_experiment(src).device.latency_threads is None
