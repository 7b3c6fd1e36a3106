"""The base model through a URL artefact store (issue 16): a worker on another machine (its own runs folder,
no shared disk) fetches the base model the first worker trained and uploaded, instead of training it again, and
the model structure found when it was trained (issue 26: found once), instead of discovering it again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgecompress.evaluators.structure import structure_of


def test_a_second_machine_fetches_the_base_model_from_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 fmnist_dir: Path, tiny_pipeline) -> None:
    from edgecompress.evaluators import base_model as base_mod
    from edgecompress.spaces import parse_experiment

    exp = parse_experiment(tiny_pipeline(base_training={"epochs": 1, "batch_size": 64, "lr": 0.1}))
    monkeypatch.setenv("EDGECOMPRESS_ARTEFACTS", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path / "machine-a"))
    first = base_mod.get_base_model(exp)
    assert not first.reused
    uri = base_mod.base_uri(f"file://{tmp_path / 'store'}", first.path)
    assert (Path(uri.removeprefix("file://")) / "_COMPLETE").is_file()  # uploaded, marker last

    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path / "machine-b"))  # nothing local on the second machine
    monkeypatch.setattr(base_mod, "train_model", lambda *a, **k: pytest.fail("the base model was trained again"))
    # the structure was found once, when the base was trained: a worker loading the base does not rediscover it
    rediscover = base_mod.attach_structure
    monkeypatch.setattr(base_mod, "attach_structure", lambda *a, **k: pytest.fail("the structure was rediscovered"))
    second = base_mod.get_base_model(exp)
    assert structure_of(second.model) == structure_of(first.model)
    monkeypatch.setattr(base_mod, "attach_structure", rediscover)
    assert second.reused and second.path != first.path and str(tmp_path / "machine-b") in str(second.path)
    assert second.metrics == first.metrics
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k]), k

    monkeypatch.delenv("EDGECOMPRESS_ARTEFACTS")  # without the store a third machine has to train (can fail)
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path / "machine-c"))
    with pytest.raises(pytest.fail.Exception, match="trained again"):
        base_mod.get_base_model(exp)
