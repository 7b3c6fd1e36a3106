"""Cascade stages that are DIC models (box net -> crop -> classifier, from the raw canvas): the fused ONNX graph
feeds them the native input (no resize) and `none` stages their resized input, and equals CascadeModel on real
scenes at batch 1 and 64, with escalation at every stage, nowhere and everywhere."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgecompress.cascade.planning.confidence import confidence
from edgecompress.cascade.planning.plan import CascadePlan, StagePlan
from edgecompress.cascade.serving.cascade_model import CascadeModel, resize
from edgecompress.cascade.serving.fused import EXIT, INPUT, LOGITS, fused_cascade_graph, fused_session
from edgecompress.evaluators import dic, scenes
from edgecompress.evaluators.data import FMNIST_FILES, read_idx
from edgecompress.evaluators.models import create_model
from edgecompress.evaluators.splits import TensorSplit
from edgecompress.runtime.backend_ort import export_onnx

NATIVE = scenes.CANVAS
# (crop, classifier size, widths): a DIC stage's plan input is the canvas; it crops to its own size
STAGES = (("dic", 16, [4, 8, 16]), ("none", 24, [8, 16, 16]), ("dic", 32, [8, 16, 32]))


@pytest.fixture(scope="module")
def scene_data(fmnist_dir: Path) -> dict:
    """Real scenes (48 px canvases rendered from real garments, as the dataset renders them): 256 to fit a box net
    on (a test may use the rendered boxes), 64 to run the cascades on, normalised as the loader gives them."""
    imgs = read_idx(fmnist_dir / FMNIST_FILES["test_images"], 3)[:320]
    labels = torch.from_numpy(read_idx(fmnist_dir / FMNIST_FILES["test_labels"], 1)[:320].astype(np.int64))
    canv, boxes = scenes.render_split(imgs, 0, "test")
    split = TensorSplit(torch.from_numpy(canv).unsqueeze(1), labels, scenes.SCENES_PREPROCESS.mean,
                        scenes.SCENES_PREPROCESS.std)
    net, _ = dic.train_box_net(split.subset(torch.arange(256)), boxes[:256], NATIVE, 1, epochs=3)
    return {"x": split.batch(torch.arange(256, 320), NATIVE), "box_net": net}


@pytest.fixture(scope="module")
def stages(scene_data: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list[Path], list[StagePlan]]:
    """Torch stage modules (DICPipeline for `dic`, the bare classifier for `none`), their ONNX exports at their
    plan input size, and the plan's stages."""
    folder = tmp_path_factory.mktemp("dic-stages")
    mods, paths, plans = [], [], []
    for k, (crop, size, widths) in enumerate(STAGES):
        torch.manual_seed(k)
        clf = create_model("resnet8", num_classes=10, in_chans=1, widths=widths).eval()
        mod = dic.DICPipeline(scene_data["box_net"], clf, NATIVE, size).eval() if crop == "dic" else clf
        side = NATIVE if crop == "dic" else size
        mods.append(mod)
        paths.append(export_onnx(mod, torch.randn(1, 1, side, side), folder / f"s{k}.onnx"))
        plans.append(StagePlan(f"s{k}", side, 0.1 * (k + 1)))
    return mods, paths, plans


def _thresholds(mods: list, plans: list[StagePlan], x: torch.Tensor, m: int, mode: str, kind: str) -> list[float]:
    """Thresholds escalating nobody, everybody, or about half of those reaching each stage ("mixed": midway in
    the widest gap near the median, so float rounding between runtimes cannot flip a sample's route)."""
    out: list[float] = []
    reach = torch.ones(len(x), dtype=torch.bool)
    with torch.no_grad():
        for k in range(m - 1):
            if mode != "mixed":
                out.append(-math.inf if mode == "none" else math.inf)
                continue
            c = np.sort(confidence(mods[k](resize(x, plans[k].input_size)), kind)[reach].numpy())
            mid = len(c) // 2
            lo, hi = max(1, mid - len(c) // 4), min(len(c) - 1, mid + len(c) // 4)
            j = max(range(lo, hi + 1), key=lambda i: c[i] - c[i - 1])
            t = float((c[j] + c[j - 1]) / 2)
            out.append(t)
            full = confidence(mods[k](resize(x, plans[k].input_size)), kind)
            reach &= full < t
    return out


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("mode", ["mixed", "none", "all"])
def test_fused_with_dic_stages_equals_cascade_model(scene_data: dict, stages: tuple, m: int, mode: str) -> None:
    mods, paths, plans = stages
    x = scene_data["x"]
    plan = CascadePlan(stages=plans[:m], thresholds=_thresholds(mods, plans, x, m, mode, "margin"), kind="margin")
    graph = fused_cascade_graph(paths[:m], plan, 1, NATIVE, 10)
    ops = [n.op_type for n in graph.graph.node]
    assert "GridSample" in ops and "Resize" not in ops  # stage 0 (DIC) takes the canvas as it comes
    sess = fused_session(graph, threads=1)
    ref_logits, ref_exit = CascadeModel(mods[:m], plan, in_chans=1).route(x)
    logits, exits = sess.run([LOGITS, EXIT], {INPUT: x.numpy()})
    np.testing.assert_array_equal(exits, ref_exit.numpy())
    np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=1e-3, atol=1e-3)
    expected = {"none": {0}, "all": {m - 1}, "mixed": set(range(m))}[mode]
    assert set(exits.tolist()) == expected
    one = [sess.run([LOGITS, EXIT], {INPUT: x[i : i + 1].numpy()}) for i in range(0, len(x), 3)]
    np.testing.assert_array_equal(np.concatenate([e for _, e in one]), ref_exit.numpy()[::3])
    np.testing.assert_allclose(np.concatenate([z for z, _ in one]), ref_logits.numpy()[::3], rtol=1e-3, atol=1e-3)


def test_none_stage_is_resized_in_graph_dic_stage_is_not(stages: tuple) -> None:
    """In the 3-stage graph the `none` stage (24 px) gets the one Resize, in the `If` branch that runs it."""
    _, paths, plans = stages
    plan = CascadePlan(stages=plans, thresholds=[0.5, 0.5])
    graph = fused_cascade_graph(paths, plan, 1, NATIVE, 10)

    def ops(g: onnx.GraphProto) -> list[str]:
        out = []
        for n in g.node:
            out.append(n.op_type)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    out.extend(ops(a.g))
        return out

    all_ops = ops(graph.graph)
    assert all_ops.count("Resize") == 1 and all_ops.count("GridSample") == 2


def test_int8_dic_stage_inlined_equals_lean_cascade(scene_data: dict, stages: tuple, tmp_path: Path) -> None:
    """An int8 (ORT static QDQ, calibrated on canvases as the evaluator and export do) DIC stage inside the fused
    graph gives what its own session gives, the `none` stage behind it resized in the graph."""
    from edgecompress.cascade.serving.fused import check_fused
    from edgecompress.cascade.serving.lean import LeanCascade
    from edgecompress.runtime.backend import deploy

    mods, _, plans = stages
    x = scene_data["x"]
    calib = [x[i : i + 16] for i in range(0, 64, 16)]
    deps = [deploy(mods[0], x[:1], precision="int8", calib_batches=calib, threads=1, workdir=tmp_path / "a"),
            deploy(mods[1], resize(x[:1], plans[1].input_size), threads=1, workdir=tmp_path / "b")]
    c = confidence(torch.from_numpy(deps[0].run_array(x.numpy())), "margin")
    plan = CascadePlan(stages=plans[:2], thresholds=[float(np.quantile(c.numpy(), 0.4))])
    sess = fused_session(fused_cascade_graph([d.path for d in deps], plan, 1, NATIVE, 10), threads=1)
    lean = LeanCascade([d.run_array for d in deps], plan)
    res = check_fused(sess, lean.route, [x.numpy(), x[:1].numpy(), x[7:8].numpy()], tolerance=1e-4)
    assert res.ok and res.route_agreement == 1.0, res
