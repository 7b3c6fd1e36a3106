"""Dynamic image cropping: crop = RoIAlign, CAM boxes beat the best fixed box, the one-graph export equals torch."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from edgecompress.evaluators import dic, scenes
from edgecompress.evaluators.data import FMNIST_FILES, read_idx
from edgecompress.evaluators.models import create_model
from edgecompress.evaluators.splits import TensorSplit
from edgecompress.evaluators.train import TrainSettings, accuracy, train_model
from edgecompress.runtime.backend_ort import export_onnx

MEAN, STD = scenes.SCENES_PREPROCESS.mean, scenes.SCENES_PREPROCESS.std
C = 32  # canvas side in these tests


@pytest.fixture(scope="module")
def tiny(fmnist_dir: Path) -> dict:
    """1000 training and 300 test scenes (32 px canvases, to keep it fast) rendered from real garments, and a
    tiny ResNet-8 trained on them."""
    arrays = {k: read_idx(fmnist_dir / f, 3 if k.endswith("images") else 1) for k, f in FMNIST_FILES.items()}
    out = {}
    for split, n in (("train", 1000), ("test", 300)):
        imgs, boxes = scenes.render_split(arrays[f"{split}_images"][:n], 0, split, canvas=C)
        labels = torch.from_numpy(arrays[f"{split}_labels"][:n].astype(np.int64))
        out[split] = TensorSplit(torch.from_numpy(imgs).unsqueeze(1), labels, MEAN, STD)
        out[f"{split}_boxes"] = boxes
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_chans=1, widths=[16, 32, 64])
    settings = TrainSettings(epochs=3, batch_size=32, lr=0.05, seed=0, augment=False, memory_format="contiguous",
                             compute_lock=False)
    train_model(model, out["train"], C, settings)
    out["model"] = model.eval()
    out["accuracy"] = accuracy(model, out["test"], C, compute_lock=False)
    return out


def test_crop_is_roialign() -> None:
    x = torch.randn(2, 1, 48, 48)
    p = torch.tensor([[0, 0, 0, 0, 0.5, 0.45, 0.3, 0.3], [0, 0, 0, 0, 0.35, 0.6, 0.2, 0.25]])
    cx, cy, hx, hy = (p[:, 4 + i] * 48 for i in range(4))
    rois = torch.stack([torch.arange(2.0), cx - hx, cy - hy, cx + hx, cy + hy], 1)
    for size in (16, 24):
        for samples in (1, 2):
            ref = roi_align(x, rois, (size, size), spatial_scale=1.0, sampling_ratio=samples, aligned=True)
            assert torch.allclose(dic.crop(x, p, size, samples=samples), ref, atol=1e-4)


def test_cam_box_of_a_blob_and_square_crop_targets() -> None:
    cam = torch.zeros(1, 12, 12)
    cam[0, 3:6, 6:10] = 1.0
    box = dic.cam_boxes(cam, 48, threshold=0.5)[0].tolist()
    assert 20 <= box[0] <= 26 and 10 <= box[1] <= 14 and 38 <= box[2] <= 42 and 22 <= box[3] <= 26
    t = dic.crop_targets(np.array([[10.0, 20.0, 20.0, 40.0]]), 48)[0]  # 10 x 20 box -> square crop of side 20 x m
    assert np.allclose(t, [15 / 48, 30 / 48, 20 * dic.CROP_MARGIN / 96, 20 * dic.CROP_MARGIN / 96])


def test_cam_boxes_beat_the_best_fixed_box(tiny: dict) -> None:
    assert tiny["accuracy"] > 0.25, "the tiny model did not learn; its CAMs say nothing"
    cams = dic.label_boxes(tiny["model"], tiny["test"], C)
    cam_iou = dic.box_iou(cams, tiny["test_boxes"]).mean()
    # the best single box on the training set's ground truth, over a 2 px grid
    grid = [(x0, y0, x1, y1) for x0 in range(0, C, 2) for y0 in range(0, C, 2)
            for x1 in range(x0 + 4, C + 1, 2) for y1 in range(y0 + 4, C + 1, 2)]
    gt = tiny["train_boxes"]
    best = max(grid, key=lambda b: dic.box_iou(np.tile(np.array(b, np.float32), (len(gt), 1)), gt).mean())
    fixed_iou = dic.box_iou(np.tile(np.array(best, np.float32), (len(tiny["test_boxes"]), 1)),
                            tiny["test_boxes"]).mean()
    assert cam_iou > fixed_iou + 0.03, (cam_iou, fixed_iou, best)  # measured: 0.49 vs 0.41


def test_box_predictor_never_reads_ground_truth() -> None:
    src = inspect.getsource(dic)
    assert "scenes" not in src.replace("evaluators/scenes.py", "") and "ground_truth" not in src


def test_exported_dic_graph_equals_the_torch_pipeline(tiny: dict, tmp_path: Path) -> None:
    boxes = dic.label_boxes(tiny["model"], tiny["train"], C)
    net, losses = dic.train_box_net(tiny["train"], boxes, C, 1, epochs=3)
    assert losses[-1] < losses[0]
    pipe = dic.DICPipeline(net, tiny["model"], C, 16).eval()
    x = tiny["test"].batch(torch.arange(64), C)
    with torch.no_grad():
        ref = pipe(x).numpy()
        crops = dic.CroppedSplit(tiny["test"], net(x), C).batch(torch.arange(64), 16)
        assert np.allclose(tiny["model"](crops).numpy(), ref, atol=1e-5)  # training sees the deployed crops
    import onnx
    import onnxruntime as ort

    path = export_onnx(pipe, x[:2], tmp_path / "dic.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"GridSample", "Gemm", "Conv"} <= ops and "RoiAlign" not in ops
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(out - ref).max() < 1e-3 and (out.argmax(1) == ref.argmax(1)).all()


def test_box_net_and_crop_stay_a_few_cheap_nodes(tmp_path: Path) -> None:
    """Batch-1 latency of the box net + crop is per graph node (measured: the v1 CNN's convs and layout reorders
    cost ~4 us more than the plain pipeline's resize, the MLP ~1 us): the exported box net + crop is
    AveragePool, Reshape, 2 Gemm (+ReLU/Sigmoid), the grid Gemm, Reshape, GridSample, and no Conv."""
    import onnx

    class BoxAndCrop(torch.nn.Module):
        def __init__(self, net: dic.BoxNet) -> None:
            super().__init__()
            self.net = net
            w, b = dic.crop_matrix(16)  # a buffer, as in DICPipeline
            self.register_buffer("w", w, persistent=False)
            self.register_buffer("b", b, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return dic.crop(x, self.net(x), 16, (self.w, self.b))

    net = dic.BoxNet(1, 48).eval()
    assert net.arch == "mlp" and net.res == 12 and sum(p.numel() for p in net.parameters()) < 6000
    path = export_onnx(BoxAndCrop(net).eval(), torch.randn(1, 1, 48, 48), tmp_path / "bc.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node if n.op_type != "Constant"]  # constants fold away
    assert "Conv" not in ops and ops.count("GridSample") == 1 and len(ops) <= 9, ops


def test_version_1_box_net_files_still_load(tmp_path: Path) -> None:
    """Trial artefacts written before DIC_VERSION 2 hold a conv box net whose kwargs name no arch."""
    old = dic.BoxNet(1, 48, res=24, width=8, arch="conv").eval()
    torch.save({"version": 1, "kwargs": {"in_chans": 1, "native": 48, "res": 24, "width": 8},
                "state_dict": old.state_dict()}, tmp_path / dic.BOX_NET_FILE)
    loaded = dic.load_box_net(tmp_path / dic.BOX_NET_FILE)
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        assert loaded.arch == "conv" and torch.equal(loaded(x), old(x))
    dic.save_box_net(dic.BoxNet(1, 48).eval(), tmp_path / "new.pt")  # the new one round-trips with its arch
    assert dic.load_box_net(tmp_path / "new.pt").arch == "mlp"
