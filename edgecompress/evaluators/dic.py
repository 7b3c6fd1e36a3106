"""Dynamic image cropping (DIC, the seed's third axis): CAM box labels -> tiny box predictor -> crop -> classifier.

1. `label_boxes`: class-activation maps of the trained base model (CAM when a linear classifier follows global
   pooling, as in the zoo's ResNets; Grad-CAM otherwise) for each training image's own label, upsampled to the
   canvas and thresholded at CAM_THRESHOLD of their range: the box of the pixels above it.
2. `BoxNet`: a ~5k-parameter MLP on the canvas average-pooled to BOX_RES (12) px, trained on those boxes
   (`train_box_net`) to regress 8 numbers in [0, 1]: the box (cx, cy, w, h), whose IoU is reported, and the square
   crop around it (cx, cy, half-width, half-height; side = the box's longer side x CROP_MARGIN, at least MIN_CROP).
   DIC_VERSION 1 used a 2-conv CNN at 24 px; at batch 1 its graph nodes (AveragePool, 2 Conv+ReLU, ONNX Runtime's
   NCHWc reorders, Reshape, Gemm+Sigmoid) cost more than the MAC count says. Measured (ResNet-8 8/16/32 at 16 px,
   ORT 1 thread, batch 1, loaded 2-core machine, min of interleaved blocks): box net + crop cost 4.0-4.4 us more
   than the plain pipeline's antialiased resize with the CNN, 0.5-1.2 us with the MLP (the plain 16 px pipeline
   ~43 us at load 6), and with 2 threads under load the CNN's convs, spread over the busy pool, cost 3x more; box
   IoU against the true boxes on the same 1000 test canvases (both trained on the same CAM boxes of 4000): 0.488
   (CNN) vs 0.485 (MLP); the MLP also trains ~7x faster.
   Nothing here reads ground-truth boxes (evaluators/scenes.py keeps them apart, for evaluation only).
3. `DICPipeline`: box net -> crop -> classifier, one module from the raw canvas, exported as one ONNX graph.
   The crop is RoIAlign (CROP_SAMPLES per bin and axis) written as GridSample (+ AveragePool when > 1), its
   sampling grid one Gemm of the box net's outputs: 2-3 graph nodes where torchvision's RoIAlign export takes
   ~25 (batch indices, slicing), which at batch 1 cost more than the box net itself. `CroppedSplit` gives the same crops
   to fine-tuning and evaluation. `get_box_predictor` caches 1-2 next to the base model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from filelock import FileLock

from edgecompress.errors import CompressionError
from edgecompress.evaluators.data import DataBundle
from edgecompress.evaluators.splits import Split, make_loader
from edgecompress.evaluators.structure import ensure_structure
from edgecompress.utils import atomic_path, atomic_write_json, seed_everything

BOX_RES = 12  # the box predictor's input side (px); DIC_VERSION 1: 24 (conv)
BOX_WIDTH = 32  # hidden units (mlp) or first conv's channels (conv; 8 in DIC_VERSION 1)
BOX_ARCH = "mlp"  # DIC_VERSION 1: "conv"
CAM_THRESHOLD = 0.3  # fraction of each CAM's range (the CAM paper uses 0.2 of the max)
CROP_MARGIN = 1.15  # the crop's side over the predicted box's longer side
MIN_CROP = 0.25  # smallest crop side, as a fraction of the canvas
CROP_SAMPLES = 1  # bilinear samples per output pixel and axis (RoIAlign's sampling_ratio): ORT's GridSample
# at batch 64 cost more than half the 16 px classifier with 2 x 2 (measured, loaded 2-core machine)
BOX_EPOCHS = 12
DIC_VERSION = 2  # 2: the MLP box net at 12 px (1: conv at 24 px); part of the cached predictor's recipe
BOX_NET_FILE = "box_net.pt"


class BoxNet(nn.Module):
    """Tiny box regressor: average-pool the canvas to `res` px, then (arch "mlp", the default) one hidden layer of
    `width` ReLU units, or (arch "conv", DIC_VERSION 1's, still loadable) two strided 3x3 convs of `width` and
    2 `width` channels; a linear head -> sigmoid: the 8 outputs (box cx, cy, w, h; crop cx, cy, hx, hy).

    Why an MLP at 12 px: at batch 1 the box net's cost is per graph node, not per MAC. The conv version
    (AveragePool, 2 Conv+ReLU with ONNX Runtime's NCHWc layout reorders after each, Reshape, Gemm+Sigmoid) cost
    about as much again as the plain pipeline's antialiased resize; AveragePool, Reshape and two fused Gemms cost a
    third of that (see module docstring for the figures)."""

    def __init__(self, in_chans: int = 1, native: int = 48, res: int = BOX_RES, width: int = BOX_WIDTH,
                 arch: str = BOX_ARCH) -> None:
        super().__init__()
        if arch not in ("mlp", "conv"):
            raise ValueError(f"arch must be 'mlp' or 'conv', got {arch!r} (BoxNet)")
        self.in_chans, self.native, self.res, self.width, self.arch = in_chans, native, res, width, arch
        if arch == "conv":
            self.conv1 = nn.Conv2d(in_chans, width, 3, 2, 1)
            self.conv2 = nn.Conv2d(width, 2 * width, 3, 2, 1)
            side = (res + 3) // 4
            self.head = nn.Linear(2 * width * side * side, 8)
        else:
            self.fc1 = nn.Linear(in_chans * res * res, width)
            self.head = nn.Linear(width, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.res:
            k = self.native // self.res
            x = F.avg_pool2d(x, k) if k * self.res == self.native else F.interpolate(
                x, size=(self.res, self.res), mode="bilinear", align_corners=False)
        if self.arch == "conv":
            x = F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1)
        else:
            x = F.relu(self.fc1(x.flatten(1)))
        return torch.sigmoid(self.head(x))


def crop_targets(boxes: np.ndarray, canvas: int) -> np.ndarray:
    """The square crop (cx, cy, half-width, half-height in canvas units) around each [x0, y0, x1, y1] box."""
    b = to_cxcywh(boxes, canvas)
    half = np.maximum(np.maximum(b[:, 2], b[:, 3]) * CROP_MARGIN, MIN_CROP) / 2
    return np.stack([b[:, 0], b[:, 1], half, half], 1)


def crop_matrix(size: int, samples: int = CROP_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, bias) with grid = box_net_output @ W.T + bias: GridSample coordinates (align_corners=False) of a
    (samples x size)^2 grid at the centres of the crop's samples x samples sub-bins (outputs 4..7: cx, cy,
    hx, hy)."""
    n = samples * size
    t = -1.0 + (2 * torch.arange(n, dtype=torch.float32) + 1) / n  # sub-bin centres in [-1, 1]
    w = torch.zeros(n, n, 2, 8)
    w[:, :, 0, 4] = 2.0  # u = 2cx - 1 + 2hx * t_col
    w[:, :, 0, 6] = 2.0 * t.view(1, n)
    w[:, :, 1, 5] = 2.0  # v = 2cy - 1 + 2hy * t_row
    w[:, :, 1, 7] = 2.0 * t.view(n, 1)
    return w.reshape(-1, 8), torch.full((n * n * 2,), -1.0)


def crop(x: torch.Tensor, boxes: torch.Tensor, size: int, matrix: tuple[torch.Tensor, torch.Tensor] | None = None,
         samples: int = CROP_SAMPLES) -> torch.Tensor:
    """Crop each canvas to its box net output's square crop (outputs 4..7) at size x size: bilinear samples at
    samples x samples sub-bin centres, averaged (RoIAlign with sampling_ratio `samples`); outside reads 0."""
    w, b = matrix if matrix is not None else crop_matrix(size, samples)
    n = samples * size
    out = F.grid_sample(x, F.linear(boxes, w, b).view(-1, n, n, 2), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return F.avg_pool2d(out, samples) if samples > 1 else out


class BoxAndCrop(nn.Module):
    """The DIC pipeline without its classifier (box predictor -> crop): what cropping costs, for benchmarks."""

    def __init__(self, box_net: nn.Module, size: int) -> None:
        super().__init__()
        self.net, self.size = box_net, size
        w, b = crop_matrix(size)
        self.register_buffer("w", w, persistent=False)
        self.register_buffer("b", b, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return crop(x, self.net(x), self.size, (self.w, self.b))


class DICPipeline(nn.Module):
    """Raw (normalised) canvas -> box net -> crop at `size` -> classifier: the deployed DIC model."""

    def __init__(self, box_net: BoxNet, classifier: nn.Module, native: int, size: int) -> None:
        super().__init__()
        self.box_net, self.classifier, self.native, self.size = box_net, classifier, native, size
        w, b = crop_matrix(size)
        self.register_buffer("crop_w", w, persistent=False)
        self.register_buffer("crop_b", b, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(crop(x, self.box_net(x), self.size, (self.crop_w, self.crop_b)))


class ResizePipeline(nn.Module):
    """Raw canvas -> antialiased bilinear resize to `size` (as the loader does) -> classifier: `crop: none`
    deployed from the same input as a DICPipeline, so both latencies include getting to the classifier's input."""

    def __init__(self, classifier: nn.Module, size: int) -> None:
        super().__init__()
        self.classifier, self.size = classifier, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.classifier(x)


# ---- CAM labels -------------------------------------------------------------------------------------
def _cam_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The feature map CAM boxes come from (the model structure's last map before global pooling) and the
    classifier; a model without such a map is refused (the crop axis does not apply to it)."""
    struct = ensure_structure(model)
    if struct.cam_layer is None:
        raise CompressionError(f"dynamic image cropping: {struct.axes()['crop']}")
    return model.get_submodule(struct.cam_layer), model.get_submodule(struct.classifier)


def cam_method(model: nn.Module) -> str:
    """"cam" when the classifier is one linear layer on the globally pooled map (its weights score each channel),
    else "gradcam" (an MLP head, a conv classifier)."""
    feature, head = _cam_parts(model)
    channels = _map_channels(model, feature)
    return "cam" if isinstance(head, nn.Linear) and head.in_features == channels else "gradcam"


def _map_channels(model: nn.Module, feature: nn.Module) -> int:
    struct = ensure_structure(model)
    seen: list[int] = []
    hook = feature.register_forward_hook(lambda m, i, o: seen.append(int(o.shape[1])))
    try:
        with torch.no_grad():
            model(torch.zeros(1, struct.in_chans, struct.input_size, struct.input_size))
    finally:
        hook.remove()
    return seen[-1]


def class_activation_maps(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                          method: str = "auto") -> torch.Tensor:
    """N x h x w maps of class `labels` on the last stage's features (CAM: the classifier's weights; Grad-CAM:
    the class score's gradient averaged over the map)."""
    method = cam_method(model) if method == "auto" else method
    feats: list[torch.Tensor] = []
    feature, head = _cam_parts(model)
    hook = feature.register_forward_hook(lambda m, i, o: feats.append(o))
    try:
        if method == "cam":
            with torch.no_grad():
                model(x)
            w = head.weight[labels]  # N x C
            return torch.einsum("nc,nchw->nhw", w, feats[0])
        with torch.enable_grad():
            out = model(x.requires_grad_(True))
            grads = torch.autograd.grad(out.gather(1, labels.view(-1, 1)).sum(), feats[0])[0]
        return F.relu(torch.einsum("nc,nchw->nhw", grads.mean((2, 3)), feats[0])).detach()
    finally:
        hook.remove()


def cam_boxes(cams: torch.Tensor, canvas: int, threshold: float = CAM_THRESHOLD) -> torch.Tensor:
    """N x 4 boxes [x0, y0, x1, y1] (pixels, exclusive ends) of the pixels at or above `threshold` of each
    map's min..max range, the map bilinearly upsampled to the canvas."""
    up = F.interpolate(cams.unsqueeze(1), size=(canvas, canvas), mode="bilinear", align_corners=False)[:, 0]
    lo = up.flatten(1).min(1).values.view(-1, 1, 1)
    hi = up.flatten(1).max(1).values.view(-1, 1, 1)
    mask = (up - lo) >= threshold * (hi - lo).clamp(min=1e-12)
    rows, cols = mask.any(2), mask.any(1)  # N x H, N x W
    ar = torch.arange(canvas)

    def ends(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = torch.where(m, ar, canvas).min(1).values
        last = torch.where(m, ar, -1).max(1).values + 1
        return first, last

    x0, x1 = ends(cols)
    y0, y1 = ends(rows)
    return torch.stack([x0, y0, x1, y1], 1).float()


def label_boxes(model: nn.Module, split: Split, native: int, method: str = "auto",
                threshold: float = CAM_THRESHOLD, batch_size: int = 256) -> np.ndarray:
    """CAM boxes (N x 4, pixels) of every image of `split` for its own label."""
    model.eval()
    out = []
    for x, y in make_loader(split, native, batch_size):
        out.append(cam_boxes(class_activation_maps(model, x, y, method), native, threshold))
    return torch.cat(out).numpy()


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row IoU of two N x 4 arrays of [x0, y0, x1, y1] boxes."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area - inter, 1e-9)


def to_cxcywh(boxes: np.ndarray, canvas: int) -> np.ndarray:
    b = boxes / canvas
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


def to_xyxy(pred: np.ndarray, canvas: int) -> np.ndarray:
    """The box outputs (cx, cy, w, h in [0, 1], the first 4 of a box net's) -> [x0, y0, x1, y1] pixels."""
    cx, cy, w, h = (pred[:, i] * canvas for i in range(4))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


# ---- the box predictor ------------------------------------------------------------------------------
def train_box_net(split: Split, boxes: np.ndarray, native: int, in_chans: int, epochs: int = BOX_EPOCHS,
                  seed: int = 0, batch_size: int = 128, lr: float = 3e-3) -> tuple[BoxNet, list[float]]:
    """Fit a BoxNet to `boxes` (pixels) of `split`'s images and their square crops (L1 loss on the 8 outputs);
    returns it and the mean loss of each epoch."""
    seed_everything(seed)
    net = BoxNet(in_chans, native)
    target = torch.from_numpy(np.concatenate([to_cxcywh(boxes, native), crop_targets(boxes, native)], 1)).float()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = len(split)
    steps = (n + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(1, epochs * steps))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    net.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start: start + batch_size]
            loss = F.l1_loss(net(split.batch(idx, native)), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        losses.append(total / max(1, n))
    return net.eval(), losses


@torch.no_grad()
def predict_boxes(net: BoxNet, split: Split, native: int, batch_size: int = 512) -> np.ndarray:
    """The box net's 8 outputs (box cx, cy, w, h; crop cx, cy, hx, hy) for every image of `split`, in order."""
    return torch.cat([net(x) for x, _ in make_loader(split, native, batch_size)]).numpy()


class CroppedSplit:
    """A split seen through the box predictor: batch() crops each canvas (CroppedSplit.boxes: the box net's
    outputs) to the requested size, as DICPipeline does; augmentation flips the crop only."""

    def __init__(self, split: Split, boxes: torch.Tensor, native: int) -> None:
        self.split, self.boxes, self.native = split, boxes, native
        self.labels = split.labels

    def __len__(self) -> int:
        return len(self.split)

    def subset(self, indices: torch.Tensor) -> CroppedSplit:
        return CroppedSplit(self.split.subset(indices), self.boxes[indices], self.native)  # type: ignore[attr-defined]

    def batch(self, indices: torch.Tensor, size: int, augment: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
        out = crop(self.split.batch(indices, self.native), self.boxes[indices], size)
        if augment:
            flip = torch.rand(len(out), generator=generator) < 0.5
            out[flip] = out[flip].flip(-1)
        return out


def cropped_bundle(data: DataBundle, net: BoxNet) -> DataBundle:
    """`data` with every split cropped by `net` (its boxes computed once per split)."""
    def wrap(split: Split) -> CroppedSplit:
        return CroppedSplit(split, torch.from_numpy(predict_boxes(net, split, data.native_size)), data.native_size)

    return DataBundle(data.name, data.classes, data.in_chans, data.native_size, wrap(data.train), wrap(data.val),
                      wrap(data.test), data.preprocess, list(data.notes))


@dataclass
class BoxPredictor:
    net: BoxNet
    metrics: dict[str, Any]
    folder: Path


def save_box_net(net: BoxNet, path: Path) -> None:
    blob = {"version": DIC_VERSION, "kwargs": {"in_chans": net.in_chans, "native": net.native, "res": net.res,
                                               "width": net.width, "arch": net.arch}, "state_dict": net.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_box_net(path: Path) -> BoxNet:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = BoxNet(**{"arch": "conv", **blob["kwargs"]})  # version 1 blobs (trial artefacts) name no arch: conv
    net.load_state_dict(blob["state_dict"])
    return net.eval()


def get_box_predictor(base_model: nn.Module, data: DataBundle, folder: Path, seed: int = 0) -> BoxPredictor:
    """The box predictor of a base model, cached in `folder` (next to the base model): CAM boxes of the
    training split, then a BoxNet trained on them (again when the cached one has another recipe)."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {"version": DIC_VERSION, "cam_threshold": CAM_THRESHOLD, "box_res": BOX_RES, "box_arch": BOX_ARCH,
              "box_width": BOX_WIDTH, "crop_margin": CROP_MARGIN,
              "min_crop": MIN_CROP, "box_epochs": BOX_EPOCHS, "train_images": len(data.train)}
    with FileLock(str(folder / ".lock")):
        if (folder / BOX_NET_FILE).is_file() and (folder / "metrics.json").is_file():
            metrics = json.loads((folder / "metrics.json").read_text())
            if all(metrics.get(k) == v for k, v in recipe.items()):
                return BoxPredictor(load_box_net(folder / BOX_NET_FILE), metrics, folder)
        t0 = time.perf_counter()
        method = cam_method(base_model)
        boxes = label_boxes(base_model, data.train, data.native_size, method)
        np.save(folder / "cam_boxes_train.npy", boxes)
        t1 = time.perf_counter()
        net, losses = train_box_net(data.train, boxes, data.native_size, data.in_chans, seed=seed)
        save_box_net(net, folder / BOX_NET_FILE)
        metrics = {**recipe, "cam_method": method,
                   "box_net_params": sum(p.numel() for p in net.parameters()),
                   "box_losses": [round(v, 5) for v in losses], "label_seconds": round(t1 - t0, 2),
                   "box_train_seconds": round(time.perf_counter() - t1, 2),
                   "cam_box_mean_area": float(np.mean((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
                   / data.native_size ** 2}
        atomic_write_json(folder / "metrics.json", metrics)
        return BoxPredictor(net, metrics, folder)


def load_dic_pipeline(folder: Path, classifier: nn.Module, native: int, size: int) -> DICPipeline:
    """The deployed DIC model of a trial: its folder's box net (written by the evaluator) + its classifier."""
    path = Path(folder) / BOX_NET_FILE
    if not path.is_file():
        from edgecompress.errors import EdgeCompressError

        raise EdgeCompressError(f"{path}: a crop: dic trial needs its box predictor here (written by the evaluator)")
    return DICPipeline(load_box_net(path), classifier.eval(), native, size).eval()
