"""`crop: dic` trials are cascade stages: a tiny real study on fashion_mnist_scenes with a crop axis, its DIC
trial among the candidates, served (fused ONNX graph, deployed stages) and in torch (CascadeModel) from its
artefacts, equal to each other and to what the stored (cropped pipeline) test logits predict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.cascade.pipeline.measure import _served_form, evaluate_cascade
from edgecompress.cascade.pipeline.study_candidates import stage_modules, study_candidates
from edgecompress.cascade.planning.confidence import confidence
from edgecompress.cascade.planning.plan import CascadePlan, StagePlan, simulate
from edgecompress.cascade.serving.cascade_model import CascadeModel
from edgecompress.cascade.serving.fused import check_fused, fused_session
from edgecompress.cli import main
from edgecompress.evaluators.data import load_data
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.evaluators.splits import make_loader
from edgecompress.study.attrs import study_experiment
from edgecompress.study.storage import load_study

TINY = {
    "name": "tiny-dic-cascade", "seed": 0,
    "dataset": {"name": "fashion_mnist_scenes", "train_subset": 300, "val_subset": 100, "test_subset": 100},
    "model": {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}},
    "base_training": {"epochs": 1, "batch_size": 64, "lr": 0.1},
    "finetune": {"epochs": 1, "batch_size": 64, "train_subset": 100, "bn_recalibration_images": 64},
    "space": {"prune": {"choices": [0.0]}, "bits": {"choices": [32]}, "resolution": {"choices": [0.5, 1.0]},
              "crop": {"choices": ["none", "dic"]}},
    "budget": {"trials": 2, "sampler": "random",
               "enqueue": [{"resolution": 0.5, "crop": "dic"}, {"resolution": 1.0, "crop": "none"}]},
    "device": {"device": "cpu", "threads": 1, "min_repeats": 5, "max_seconds": 0.2, "batch_size": 8},
}


@pytest.fixture(scope="module")
def dic_study(tmp_path_factory: pytest.TempPathFactory, fmnist_dir: Path) -> dict:
    from edgecompress.search import run_search
    from edgecompress.spaces import parse_experiment

    runs = tmp_path_factory.mktemp("dic-study-runs")
    old = os.environ.get("EDGECOMPRESS_RUNS")
    os.environ["EDGECOMPRESS_RUNS"] = str(runs)
    try:
        storage = f"sqlite:///{runs}/dic.db"
        run_search(parse_experiment(TINY), "dic", storage=storage, trials=2, seed=0)
    finally:
        if old is None:
            os.environ.pop("EDGECOMPRESS_RUNS", None)
        else:
            os.environ["EDGECOMPRESS_RUNS"] = old
    st = load_study("dic", storage)
    exp = study_experiment(st)
    cands, labels, notes = study_candidates(st, near_front=3)
    return {"storage": storage, "study": st, "exp": exp, "data": load_data(exp.dataset, exp.seed),
            "cands": cands, "labels": labels, "notes": notes}


def _by_crop(cands: list, crop: str, size: int) -> object:
    return next(c for c in cands if c.crop == crop and (c.classifier_size or c.spec.input_size) == size)


def test_dic_trial_is_a_candidate_taking_the_canvas(dic_study: dict) -> None:
    d = _by_crop(dic_study["cands"], "dic", 24)
    assert d.spec.input_size == 48 and d.classifier_size == 24
    assert (d.artefact_dir / "box_net.pt").is_file()
    assert not any("crop" in n for n in dic_study["notes"]), dic_study["notes"]


def _plan(cands: list, labels: np.ndarray, quantile: float = 0.5) -> CascadePlan:
    """Stages in the given order; each threshold at `quantile` of that stage's validation confidences."""
    thr = [float(np.quantile(confidence(c.spec.val_logits, "margin"), quantile)) for c in cands[:-1]]
    return CascadePlan(stages=[StagePlan(c.spec.name, c.spec.input_size, c.spec.latency_ms) for c in cands],
                       thresholds=thr, kind="margin")


def test_cascade_with_a_dic_stage_served_equals_torch_and_stored_logits(dic_study: dict) -> None:
    """(3-stage and mixed dic/none orders on real scenes: tests/cascade/test_fused_dic.py.)"""
    cands = [_by_crop(dic_study["cands"], "dic", 24), _by_crop(dic_study["cands"], "none", 48)]
    plan = _plan(cands, dic_study["labels"])
    data, exp = dic_study["data"], dic_study["exp"]
    by_name = {c.spec.name: c for c in cands}
    # served: the fused graph of the deployed stages, checked against their LeanCascade on the whole test split
    fused, check, serve = _served_form(by_name, plan.names, plan, exp, data)
    assert fused is not None and check.ok and check.route_agreement > 0.99, check
    # torch reference form: DICPipeline for the dic stage, from the trial's artefacts
    ref = CascadeModel(stage_modules(by_name, plan.names, exp, data, deployed=False), plan, in_chans=1)
    batches = [x.numpy() for x, _ in make_loader(data.test, 48, 100)]
    res = check_fused(fused_session(fused, 1),
                      lambda a: tuple(t.numpy() for t in ref.route(torch.from_numpy(a))),
                      batches + [batches[0][i : i + 1] for i in range(0, 100, 7)], tolerance=1e-3)
    assert res.ok and res.route_agreement > 0.99, res
    # what the stored test logits (the cropped pipeline's) predict is what the served cascade does
    test = {c.spec.name: np.load(c.artefact_dir / ARTEFACT_FILES["test_logits"]) for c in cands}
    labels = np.load(cands[0].artefact_dir / ARTEFACT_FILES["test_labels"])
    sim = simulate(plan, test, labels)
    served = np.concatenate([serve(b).argmax(1) for b in batches])
    assert abs(float((served == labels).mean()) - sim.accuracy) <= 0.011


def test_evaluate_cascade_reports_the_dic_stage(dic_study: dict) -> None:
    cands = [_by_crop(dic_study["cands"], "dic", 24), _by_crop(dic_study["cands"], "none", 48)]
    plan = _plan(cands, dic_study["labels"])
    ev, fused = evaluate_cascade(dic_study["study"], plan, dic_study["cands"], dic_study["labels"],
                                 dic_study["exp"], dic_study["data"], samples=10)
    assert fused is not None and ev.fused and ev.stage_crops == ["dic", "none"]
    assert ev.stage_classifier_sizes == [24, 48] and ev.plan["stages"][0]["input_size"] == 48
    assert {"dic"} <= {c["crop"] for c in ev.candidates}


def test_cascade_cli_takes_dic_candidates(dic_study: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cascade"
    main(["cascade", "dic", "--storage", dic_study["storage"], "-o", str(out), "--samples", "10",
          "--near-front", "3"])
    ev = json.loads((out / "evaluation.json").read_text())
    # both saved forms (fused ONNX, TorchScript stages: a dic stage traced from the canvas) answer alike
    from edgecompress.cascade import load_cascade
    from edgecompress.cascade.serving.fused import INPUT, LOGITS

    x = next(iter(make_loader(dic_study["data"].test, 48, 100)))[0]
    with torch.no_grad():
        ts = load_cascade(out)(x).numpy()
    onnx_out = fused_session(str(out / "cascade.onnx"), 1).run([LOGITS], {INPUT: x.numpy()})[0]
    assert (ts.argmax(1) == onnx_out.argmax(1)).mean() >= 0.99
    assert any(c["crop"] == "dic" and c["input_size"] == 48 for c in ev["candidates"]), ev["candidates"]
    assert "left out" not in " ".join(ev["notes"])
    printed = capsys.readouterr().out
    for crop, size in zip(ev["stage_crops"], ev["stage_classifier_sizes"]):
        assert crop != "dic" or f"{size} dic" in printed, printed
