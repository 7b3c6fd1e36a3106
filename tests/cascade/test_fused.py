"""The fused ONNX cascade equals CascadeModel on real Fashion-MNIST images: 2 and 3 stages, batch 1 and 64,
escalation at every stage, nowhere, and everywhere; int8 stages inline unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.cascade.planning.confidence import confidence
from edgecompress.cascade.planning.plan import CascadePlan, StagePlan
from edgecompress.cascade.serving.cascade_model import CascadeModel
from edgecompress.cascade.serving.fused import EXIT, INPUT, LOGITS, check_fused, fused_cascade_graph, fused_session
from edgecompress.cascade.serving.lean import LeanCascade
from edgecompress.evaluators.data import load_data
from edgecompress.evaluators.models import create_model
from edgecompress.evaluators.splits import make_loader, resize_batch
from edgecompress.runtime.backend import deploy
from edgecompress.runtime.backend_ort import export_onnx
from edgecompress.spaces import parse_experiment

SIZES = (14, 20, 28)
WIDTHS = ([4, 8, 16], [8, 16, 16], [8, 16, 32])


@pytest.fixture(scope="module")
def images(fmnist_dir: Path) -> torch.Tensor:
    """64 real Fashion-MNIST test images, normalised as the data pipeline gives them (28 px)."""
    exp = parse_experiment({"name": "f", "dataset": {"name": "fashion_mnist", "train_subset": 64, "val_subset": 64,
                                                     "test_subset": 64}, "model": {"name": "resnet8"}})
    data = load_data(exp.dataset, 0)
    return next(iter(make_loader(data.test, 28, 64)))[0]


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[torch.nn.Module], list[Path]]:
    """Three real ResNet-8s (random weights, eval mode: the graph, not the accuracy, is under test) and their
    ONNX exports at their own input sizes."""
    folder = tmp_path_factory.mktemp("stages")
    mods, paths = [], []
    for k, (w, s) in enumerate(zip(WIDTHS, SIZES, strict=True)):
        torch.manual_seed(k)
        m = create_model("resnet8", num_classes=10, in_chans=1, widths=w).eval()
        mods.append(m)
        paths.append(export_onnx(m, torch.randn(1, 1, s, s), folder / f"s{k}.onnx"))
    return mods, paths


def _plan(mods: list[torch.nn.Module], x: torch.Tensor, m: int, mode: str, kind: str, combine: str) -> CascadePlan:
    """Thresholds that escalate nobody ("none"), everybody ("all"), or about half at each stage ("mixed")."""
    thr: list[float] = []
    with torch.no_grad():
        reach = torch.ones(len(x), dtype=torch.bool)
        for k in range(m - 1):
            c = confidence(mods[k](resize_batch(x, SIZES[k])), kind, 1.3)
            t = {"none": -math.inf, "all": math.inf}.get(mode)
            if t is None:
                t = float(np.median(c[reach].numpy()))
                reach &= c < t
            thr.append(t)
    stages = [StagePlan(f"s{k}", SIZES[k], 0.1 * (k + 1)) for k in range(m)]
    return CascadePlan(stages=stages, thresholds=thr, kind=kind, combine=combine, temperatures=[1.3] * m)


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("mode", ["mixed", "none", "all"])
@pytest.mark.parametrize(("kind", "combine"), [("margin", "last"), ("max_softmax", "seed_alpha"),
                                               ("entropy", "sum")])
def test_fused_equals_cascade_model(images: torch.Tensor, stages: tuple, m: int, mode: str, kind: str,
                                    combine: str) -> None:
    mods, paths = stages
    plan = _plan(mods, images, m, mode, kind, combine)
    sess = fused_session(fused_cascade_graph(paths[:m], plan, 1, 28, 10), threads=1)
    ref = CascadeModel(mods[:m], plan, in_chans=1)
    ref_logits, ref_exit = ref.route(images)
    # batch 64
    logits, exits = sess.run([LOGITS, EXIT], {INPUT: images.numpy()})
    np.testing.assert_array_equal(exits, ref_exit.numpy())
    np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=1e-4, atol=1e-4)
    expected = {"none": {0}, "all": {m - 1}, "mixed": set(range(m))}[mode]
    assert set(exits.tolist()) == expected  # escalation happened where the case says
    # batch 1, every image on its own (the If takes both branches across the images)
    one = [sess.run([LOGITS, EXIT], {INPUT: images[i : i + 1].numpy()}) for i in range(len(images))]
    np.testing.assert_array_equal(np.concatenate([e for _, e in one]), ref_exit.numpy())
    np.testing.assert_allclose(np.concatenate([z for z, _ in one]), ref_logits.numpy(), rtol=1e-4, atol=1e-4)


def test_check_fused_reports_a_wrong_graph(images: torch.Tensor, stages: tuple) -> None:
    """The check that gates the CLI fails when the graph routes differently from the reference."""
    mods, paths = stages
    plan = _plan(mods, images, 2, "mixed", "margin", "last")
    other = CascadePlan.from_dict({**plan.to_dict(), "thresholds": [-math.inf]})  # escalates nobody
    sess = fused_session(fused_cascade_graph(paths[:2], other, 1, 28, 10), threads=1)
    ref = CascadeModel(mods[:2], plan, in_chans=1)
    ok = check_fused(sess, lambda a: tuple(t.numpy() for t in ref.route(torch.from_numpy(a))), [images.numpy()])
    assert not ok.ok and ok.route_agreement < 0.9


def test_int8_stage_inlined_equals_lean_cascade(images: torch.Tensor, stages: tuple, tmp_path: Path) -> None:
    """A deployed int8 (ORT static QDQ) stage inside the fused graph gives what its own session gives."""
    mods, _ = stages
    calib = [resize_batch(images[i : i + 16], SIZES[0]) for i in range(0, 64, 16)]
    deps = [deploy(mods[0], calib[0][:1], precision="int8", calib_batches=calib, threads=1, workdir=tmp_path / "a"),
            deploy(mods[2], images[:1], threads=1, workdir=tmp_path / "b")]
    with torch.no_grad():
        c = confidence(torch.from_numpy(deps[0].run_array(resize_batch(images, SIZES[0]).numpy())), "margin")
    # the threshold in the widest gap between middle confidences: the int8 stage's logits are fp32 (its classifier
    # is kept fp32), so a sample exactly at the threshold (the median) could route either way on a 1e-7 difference
    mid = c.sort().values[len(c) // 4: 3 * len(c) // 4]
    k = int((mid[1:] - mid[:-1]).argmax())
    plan = CascadePlan(stages=[StagePlan("a", SIZES[0], 0.1), StagePlan("b", 28, 0.3)],
                       thresholds=[float(mid[k] + mid[k + 1]) / 2])
    sess = fused_session(fused_cascade_graph([d.path for d in deps], plan, 1, 28, 10), threads=1)
    lean = LeanCascade([d.run_array for d in deps], plan)
    res = check_fused(sess, lean.route, [images.numpy(), images[:1].numpy(), images[7:8].numpy()], tolerance=1e-4)
    assert res.ok and res.route_agreement == 1.0, res


def test_planner_latency_includes_the_fused_graph_overheads() -> None:
    """The fused graph's measured overheads are real numbers, and the plan's latency model charges the per-call
    one to every 2+ stage cascade (and the routing one per escalated input), never to a single model."""
    from edgecompress.cascade.planning.plan import expected_latency
    from edgecompress.cascade.serving.fused import measure_fused_overheads

    ov = measure_fused_overheads(1, 28, 14, 10, threads=1, calls=20, rounds=3)
    assert 0 < ov["call_overhead_ms"] < 5 and 0 <= ov["routing_overhead_ms"] < 5 and ov["run_call_ms"] > 0
    two = [StagePlan("a", 14, 0.1), StagePlan("b", 28, 0.4)]
    lat = expected_latency(two, np.array([1.0, 0.25]), routing_overhead_ms=0.02, call_overhead_ms=0.03)
    assert float(lat) == pytest.approx(0.1 + 0.25 * 0.4 + 0.25 * 0.02 + 0.03)
    assert float(expected_latency(two[:1], np.array([1.0]), call_overhead_ms=0.03)) == pytest.approx(0.1)


SHARED_POOL_SCRIPT = """
import sys, numpy as np, torch
from edgecompress.cascade.serving.fused import check_fused, fused_cascade_graph, fused_session
from edgecompress.cascade.serving.lean import LeanCascade, shared_pool_stages
from edgecompress.cascade.planning.plan import CascadePlan, StagePlan
from edgecompress.runtime.backend import deploy
from edgecompress.evaluators.models import create_model
paths = sys.argv[1:3]
plan = CascadePlan(stages=[StagePlan("a", 14, 0.1), StagePlan("b", 28, 0.3)], thresholds=[0.02])
lean = LeanCascade(shared_pool_stages(paths, threads=2), plan)
x = np.random.default_rng(0).standard_normal((32, 1, 28, 28)).astype(np.float32)
res = check_fused(fused_session(fused_cascade_graph(paths, plan, 1, 28, 10)), lean.route, [x, x[:1]])
assert res.ok and res.route_agreement == 1.0, res
# sessions made later in the process join the shared pool instead of failing
d = deploy(create_model("resnet8", num_classes=10, in_chans=1, widths=[4, 8, 16]), torch.randn(1, 1, 28, 28))
assert d.run_array(x).shape == (32, 10)
print("ok")
"""


def test_lean_stages_share_one_thread_pool(stages: tuple) -> None:
    """LeanCascade over sessions sharing the process's one ORT pool equals the fused graph, and later sessions
    of that process still build (ORT requires them to join the global pool). In a subprocess: the pool is
    process-wide."""
    import subprocess
    import sys

    _, paths = stages
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", SHARED_POOL_SCRIPT, str(paths[0]), str(paths[2])], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
