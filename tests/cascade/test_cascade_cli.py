"""`edgecompress cascade` on a real study: stages from the front, measured end to end, saved and reloadable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from edgecompress.cascade import load_cascade
from edgecompress.cascade.pipeline.study_candidates import study_candidates
from edgecompress.cli import main
from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.data import load_data
from edgecompress.evaluators.splits import make_loader
from edgecompress.spaces import parse_experiment


def test_cascade_cli_end_to_end(tiny_study: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cascade"
    main(["cascade", tiny_study["name"], "--storage", tiny_study["storage"], "-o", str(out), "--samples", "40",
          "--min-accuracy", "0.0"])
    printed = capsys.readouterr().out
    assert "measured latency batch 1" in printed and "wrote" in printed
    ev = json.loads((out / "evaluation.json").read_text())
    for key in ("latency_reduction_b1", "latency_reduction_batch", "accuracy_delta_pp", "prediction_error",
                "test_accuracy", "best_single", "seed_rule"):
        assert key in ev
    # with min accuracy 0 the cheapest single model suffices: the plan is its first stage alone
    assert len(ev["plan"]["stages"]) >= 1
    assert ev["measured_latency_b1_ms"] > 0 and ev["best_single"]["measured_latency_b1_ms"] > 0
    # the runtime's test accuracy matches what the stored test logits predict (same deploy forms)
    assert ev["test_accuracy"] == pytest.approx(ev["predicted_test_accuracy"], abs=0.02)
    front = json.loads((out / "front.json").read_text())
    assert front and all("expected_latency_ms" in p for p in front)
    # the saved directory loads with one call and classifies real images
    model = load_cascade(out)
    exp = parse_experiment(json.loads(json.dumps(optuna.load_study(
        study_name=tiny_study["name"], storage=tiny_study["storage"]).user_attrs["experiment"])))
    data = load_data(exp.dataset, exp.seed)
    x, y = next(iter(make_loader(data.test, data.native_size, 64)))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (64, 10) and torch.isfinite(logits).all()


def test_candidates_are_the_measured_front(tiny_study: dict) -> None:
    study = optuna.load_study(study_name=tiny_study["name"], storage=tiny_study["storage"])
    cands, labels, _ = study_candidates(study)
    lat = [c.spec.latency_ms for c in cands]
    acc = [c.val_accuracy for c in cands]
    assert lat == sorted(lat)
    # on a Pareto front sorted by latency, accuracy never falls as latency grows
    assert all(a2 >= a1 for a1, a2 in zip(acc, acc[1:]))
    assert labels.shape[0] == cands[0].spec.val_logits.shape[0]


def test_one_model_front_is_a_clear_message(tiny_study: dict, tmp_path: Path) -> None:
    src = optuna.load_study(study_name=tiny_study["name"], storage=tiny_study["storage"])
    storage = f"sqlite:///{tmp_path}/one.db"
    one = optuna.create_study(study_name="one", storage=storage, directions=src.directions)
    for k, v in src.user_attrs.items():
        one.set_user_attr(k, v)
    best = max((t for t in src.trials if t.values), key=lambda t: t.values[0])
    one.add_trial(best)
    with pytest.raises(EdgeCompressError, match="cascade needs at least 2 Pareto models; the front has 1"):
        study_candidates(one)
    assert np.isfinite(best.values[1])


@pytest.mark.parametrize(("option", "says"), [
    (["--kind", "foo"], "error: unknown confidence kind 'foo'; valid: margin, max_softmax, entropy"),
    (["--combine", "bar"], "error: unknown combine 'bar'; valid: last, sum, seed_alpha"),
    (["--max-latency", "fast"], "error: latency: cannot read 'fast' (examples: 2ms, 500us, 0.5s)"),
    (["--max-stages", "1"], "error: max_stages must be between 2 and 8, got 1"),
    (["--risk", "1.5"], "error: risk (epsilon) must be in (0, 1), got 1.5"),
    (["--format", "tflite"], "error: unknown cascade format tflite; valid: onnx, torchscript"),
])
def test_bad_cascade_option_is_one_line_before_any_work(tiny_study: dict, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture, option: list[str],
                                                        says: str) -> None:
    """On a real study (where `--kind foo` used to end in a traceback from the planner): one line on
    stderr, exit 2, nothing written."""
    out = tmp_path / "cascade"
    with pytest.raises(SystemExit) as e:
        main(["cascade", tiny_study["name"], "--storage", tiny_study["storage"], "-o", str(out), *option])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == says and "Traceback" not in captured.err
    assert not out.exists()


def _force_two_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny study's best plan is often one model; these tests need a real 2-stage cascade: the seed's rule
    (margin band (0, 0.03), out1 + 1.6 out2) on the cheapest and the most accurate candidate, planned on the
    logits the pipeline passes (the selection part under --risk)."""
    import edgecompress.cascade.pipeline.from_study as pipeline
    from edgecompress.cascade.planning.builder import seed_rule_plan

    def plan(cands, labels, **kw):  # noqa: ANN001, ANN003, ANN202
        best = max(cands, key=lambda c: c.val_accuracy)
        return seed_rule_plan(cands[0].spec, best.spec, threshold=0.3, labels=labels)

    monkeypatch.setattr(pipeline, "plan_cascade", plan)


def test_builder_never_reads_test_logits(tiny_study: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage choice and risk calibration finish before any test_* artefact is opened: np.load raises on a test
    file until the pipeline hands the fixed plan to the evaluation (which then may read them)."""
    import edgecompress.cascade.pipeline.from_study as pipeline

    planned: dict[str, object] = {}
    real_load, real_eval = np.load, pipeline.evaluate_cascade

    def guarded_load(path, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if Path(str(path)).name.startswith("test_") and "plan" not in planned:
            raise AssertionError(f"the builder read {path} before the plan was fixed")
        return real_load(path, *a, **k)

    def evaluate(study, plan, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        planned["plan"] = plan
        return real_eval(study, plan, *a, **k)

    _force_two_stages(monkeypatch)
    monkeypatch.setattr(np, "load", guarded_load)
    monkeypatch.setattr(pipeline, "evaluate_cascade", evaluate)
    built = pipeline.cascade_from_study(tiny_study["name"], tmp_path / "c", storage=tiny_study["storage"],
                                        samples=20, risk=0.2, delta=0.2, min_accuracy=0.0, max_stages=2)
    assert "plan" in planned and built.evaluation.fused and len(built.plan.stages) == 2
    assert built.evaluation.risk["n_calib"] == 150  # the risk calibration ran, on validation only


def test_cascade_cli_risk_and_fused_onnx(tiny_study: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--risk: validation split into selection and calibration parts (sizes printed and stored); --format onnx:
    one cascade.onnx, checked against the reference routing on the test split, that runs on real images;
    --preprocess: also the uint8-input form."""
    import onnxruntime as ort

    _force_two_stages(monkeypatch)
    out = tmp_path / "cascade"
    main(["cascade", tiny_study["name"], "--storage", tiny_study["storage"], "-o", str(out), "--samples", "20",
          "--format", "onnx", "--risk", "0.2", "--delta", "0.2", "--max-latency", "10ms", "--max-stages", "3",
          "--preprocess"])
    printed = capsys.readouterr().out
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["fused"] and ev["fused_check"]["ok"] and ev["fused_check"]["samples"] == 300
    assert sorted(p.name for p in out.iterdir()) == ["cascade.onnx", "cascade_uint8.onnx", "evaluation.json",
                                                     "front.json"]
    assert ev["fused_check"]["uint8_argmax_agreement"] >= 0.99  # stored uint8 images in, same answers
    assert {"cascade_b1_p90", "cascade_b1_p99"} <= set(ev["latency_percentiles_ms"])
    lo, hi = ev["accuracy_delta_interval_pp"]
    assert lo <= ev["accuracy_delta_pp"] <= hi
    assert len(ev["plan"]["stages"]) == 2
    r = ev["risk"]
    assert r["n_select"] + r["n_calib"] == 300 and r["n_calib"] == 150 and r["calib_risk"] <= 0.2
    assert "guarantee:" in printed and "150 calibration samples" in printed
    # batch 1: the stages were re-priced at their cost inside the fused graph, timed on validation images
    rounds = ev["refinement"]["rounds"]
    assert rounds and sum(rounds[0]["path_costs"]["calls"]) == 300 and "in-cascade cost per exit path" in printed
    assert ev["plan"]["constraint"] == {"risk": 0.2, "delta": 0.2}
    assert ev["plan"]["thresholds"] == [r["thresholds"][0]] and ev["plan"]["lows"] == [0.0]
    sess = ort.InferenceSession(str(out / "cascade.onnx"), providers=["CPUExecutionProvider"])
    exp = parse_experiment(json.loads(json.dumps(optuna.load_study(
        study_name=tiny_study["name"], storage=tiny_study["storage"]).user_attrs["experiment"])))
    data = load_data(exp.dataset, exp.seed)
    right = []
    for x, y in make_loader(data.test, data.native_size, 64):
        logits, exits = sess.run(None, {"input": x.numpy()})
        assert logits.shape == (len(x), 10) and exits.shape == (len(x),)
        right.append(logits.argmax(1) == y.numpy())
    # the saved file is the form whose test accuracy the evaluation reports
    assert float(np.concatenate(right).mean()) == pytest.approx(ev["test_accuracy"], abs=1e-9)
