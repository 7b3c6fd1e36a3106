"""Retarget: latency re-measured on this device into a new study; accuracies unchanged, no retraining."""

from __future__ import annotations

import optuna
import pytest

import edgecompress.evaluators.evaluate as ev_mod
from edgecompress.results import load_study, pareto_front, study_to_frame
from edgecompress.results.retarget import retarget_study


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
