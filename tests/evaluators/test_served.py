"""One served form per trial (evaluators/served.py): the evaluator's measured module, the export's files and a
cascade stage are the same graph on the same input.

A real study on an image folder whose native size (29 px) differs from the trial's resolution (22 px), with
the crop axis searched, so the evaluator measures resize -> classifier from the native canvas. The export
(fp32 and int8 ONNX files) and the cascade's deployed stage must take that canvas and give the logits the
evaluator's deployed form gives (the int8 forms calibrated on the same images).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

HERE = Path(__file__).resolve().parent
EXPERIMENT = {
    "name": "served", "seed": 0,
    "dataset": {"name": "imagefolder", "val_fraction": 0.5},  # root set below
    "model": {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}},
    "base_training": {"epochs": 1, "batch_size": 32, "lr": 0.05},
    "finetune": {"epochs": 1, "batch_size": 32},
    "device": {"device": "cpu", "threads": 1, "max_seconds": 0.2, "min_repeats": 5, "batch_size": 8},
    "space": {"prune": {"choices": [0.0]}, "bits": {"choices": [8]}, "resolution": {"choices": [0.75]},
              "crop": {"choices": ["none"]}},
    "budget": {"trials": 1, "sampler": "random", "enqueue_uncompressed": False},
}


def _write_folder(root: Path) -> None:
    spec = importlib.util.spec_from_file_location("export_folder", HERE.parent / "results" / "test_export_folder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.write_folder(root, n_train=40, n_val=8)


@pytest.fixture(scope="module")
def served_study(tmp_path_factory: pytest.TempPathFactory):
    import optuna

    from edgecompress.evaluators.data import load_data
    from edgecompress.evaluators.evaluator import CompressionEvaluator
    from edgecompress.search import run_search
    from edgecompress.spaces import parse_experiment

    base = tmp_path_factory.mktemp("served").resolve()
    _write_folder(base / "data")
    exp = parse_experiment({**EXPERIMENT, "dataset": {**EXPERIMENT["dataset"], "root": str(base / "data")}})
    url = f"sqlite:///{base / 'served.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECOMPRESS_RUNS", str(base / "runs"))
        data = load_data(exp.dataset, exp.seed)
        summary = run_search(exp, "served", storage=url, trials=1, evaluator=CompressionEvaluator(exp, data=data))
        assert summary.stats.complete == 1, summary
        trial = optuna.load_study(study_name="served", storage=url).trials[0]
        yield exp, data, url, trial, base


def test_export_and_cascade_stage_serve_what_the_evaluator_measured(served_study) -> None:
    from edgecompress.cascade.pipeline.study_candidates import Candidate, stage_modules
    from edgecompress.cascade.planning.plan import StageSpec
    from edgecompress.evaluators.compress import load_compressed
    from edgecompress.evaluators.dic import ResizePipeline
    from edgecompress.evaluators.evaluator import CompressionEvaluator
    from edgecompress.export.trial_export import export_trial
    from edgecompress.spaces import CompressionConfig

    exp, data, url, trial, base = served_study
    ua = trial.user_attrs
    native = data.native_size
    size = int(ua["input_size"])
    assert size < native and ua["pipeline_input_size"] == native  # the classifier's side, measured from the canvas
    folder = Path(ua["artefact_dir"])
    model, meta = load_compressed(folder / "model.pt")
    cfg = CompressionConfig.from_dict(meta["config"])

    # the evaluator's served form of this trial, deployed as the search deployed it
    served = CompressionEvaluator(exp, data=data).served(model, cfg, size)
    assert isinstance(served.module, ResizePipeline) and served.input_size == native
    dep = served.deploy(exp.device.backend, threads=1)
    x = torch.stack([data.val.batch(torch.tensor([i]), native)[0] for i in range(8)])
    want = np.asarray(dep.run_array(x.numpy()))

    out = base / "export"
    res = export_trial(url, out, trial=0, formats="onnx", data=data)
    assert res.ok
    for file, precise in (("model_int8.onnx", True), ("model.onnx", False)):
        sess = ort.InferenceSession(str(out / file), providers=["CPUExecutionProvider"])
        assert sess.get_inputs()[0].shape[-1] == native, file
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        if precise:  # the same int8 graph, calibrated on the same images
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        else:
            with torch.no_grad():
                np.testing.assert_allclose(got, served.module(x).numpy(), rtol=1e-3, atol=1e-4)

    spec = StageSpec(name="trial-0", latency_ms=float(ua["latency_ms"]), input_size=native,
                     val_logits=np.zeros((1, 4), np.float32))
    cand = Candidate(0, spec, folder, float(ua["accuracy"]), "int8", dict(ua["config"]))
    (stage,) = stage_modules({"trial-0": cand}, ["trial-0"], exp, data)
    np.testing.assert_allclose(np.asarray(stage.run_array(x.numpy())), want, rtol=1e-4, atol=1e-4)
