"""Any PyTorch classifier, not only the zoo: stages from the graph, per-stage pruning that is *correct*, ONNX
export, save/replay, fine-tuning and int8, for torchvision, timm and a user's own module.

The equivalence test is the one that catches silently wrong pruning: the channels the plan removes are zeroed in
the unpruned model (conv/linear rows and biases, BatchNorm gamma and beta) and the pruned model's logits must
equal that masked model's. ResNet-18 and the user module run in `make test`; the rest in `make test-slow`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from edgecompress.errors import CompressionError, ConfigError, ModelError
from edgecompress.evaluators.compress.io import load_compressed, save_compressed
from edgecompress.evaluators.compress.prune import HISTORY_ATTR, count_macs_params, prune_model
from edgecompress.evaluators.data import FMNIST_FILES, read_idx
from edgecompress.evaluators.graph_trace import shuffle_as_identity
from edgecompress.evaluators.models import create_model
from edgecompress.evaluators.structure import attach_structure

BASE_EPOCHS, FINETUNE_EPOCHS = 3, 1
SIZE = 32  # DenseNet-121 runs from 29 px up: every architecture gets the same real images at 32 px
slow = pytest.mark.slow
ARCHS = [
    pytest.param("torchvision:resnet18", id="resnet18"),
    pytest.param("edgecompress.testing:odd_net", id="user-module"),
    pytest.param("torchvision:mobilenet_v3_small", id="mobilenet_v3_small", marks=slow),
    pytest.param("torchvision:efficientnet_b0", id="efficientnet_b0", marks=slow),
    pytest.param("torchvision:regnet_x_400mf", id="regnet_x_400mf", marks=slow),
    pytest.param("torchvision:densenet121", id="densenet121", marks=slow),
    pytest.param("torchvision:shufflenet_v2_x0_5", id="shufflenet_v2_x0_5", marks=slow),
    pytest.param("timm:mobilenetv3_small_050", id="timm-mobilenetv3", marks=slow),
]


def _short_of_target(measured: str) -> pytest.MarkDecorator:
    """Not met yet (issue 26 stays open on it): the 4-epoch recipe from scratch leaves these models short of
    2x chance or of 97% int8 agreement (measured on a 2-core Xeon, AVX-512 + AMX, seed 0)."""
    return pytest.mark.xfail(reason=f"measured {measured}: the int8 recipe / training budget is the open part",
                             strict=False)


LEARNING = [
    pytest.param("edgecompress.testing:odd_net", id="user-module"),
    pytest.param("torchvision:resnet18", id="resnet18", marks=slow),
    pytest.param("torchvision:densenet121", id="densenet121", marks=slow),
    pytest.param("torchvision:shufflenet_v2_x0_5", id="shufflenet_v2_x0_5", marks=slow),
    # measured with the classifier kept fp32 in int8 (2-core Xeon, AVX-512 + AMX, seed 0, 3+1 epochs):
    pytest.param("torchvision:mobilenet_v3_small", id="mobilenet_v3_small",
                 marks=[slow, _short_of_target("accuracy 0.19 (not yet learning in 3+1 epochs on 4000 images)")]),
    pytest.param("torchvision:efficientnet_b0", id="efficientnet_b0",
                 marks=[slow, _short_of_target("accuracy 0.325, int8 agreement 0.13: quantizing the input of one "
                                               "conv (features.2.0 expand, per-tensor scale over channels of "
                                               "range 1.9 to 80) alone drops agreement to 0.08")]),
    pytest.param("torchvision:regnet_x_400mf", id="regnet_x_400mf",
                 marks=[slow, _short_of_target("accuracy 0.545, int8 agreement 0.76")]),
    pytest.param("timm:mobilenetv3_small_050", id="timm-mobilenetv3",
                 marks=[slow, _short_of_target("accuracy 0.74, int8 agreement 0.89")]),
]


def load_images(folder: Path, n: int = 4400) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` real Fashion-MNIST test images at 32 px, normalised, with labels."""
    x = torch.from_numpy(read_idx(folder / FMNIST_FILES["test_images"], 3)[:n].copy()).float() / 255
    y = torch.from_numpy(read_idx(folder / FMNIST_FILES["test_labels"], 1)[:n].astype(np.int64))
    x = torch.nn.functional.interpolate(x.unsqueeze(1), size=(SIZE, SIZE), mode="bilinear", antialias=True)
    return (x - 0.286) / 0.353, y


@pytest.fixture(scope="module")
def images(fmnist_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return load_images(fmnist_dir)


def _base(ref: str, images: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """The model with its structure, BatchNorm statistics set from real images (as after training)."""
    torch.manual_seed(0)
    model = create_model(ref, num_classes=10, in_chans=1, input_size=SIZE)
    attach_structure(model, 1, SIZE)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(0, 256, 64):
            model(images[0][i: i + 64])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum  # training then updates the statistics as usual
    return model.eval()


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the conv and linear layers on `x` (what pruning channels removes; Torch-Pruning's
    counter also counts norms, activations and pooling, which pruning cannot shrink quadratically)."""
    total = []

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            total.append(out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        else:
            total.append(out.numel() * m.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return sum(total)


def masked(base: nn.Module, history: list, example: torch.Tensor) -> nn.Module:
    """`base` with every channel the history removes zeroed (conv/linear rows + bias, norm gamma + beta), found
    through a fresh dependency graph of the unpruned model."""
    m = copy.deepcopy(base)
    with torch.enable_grad(), shuffle_as_identity():  # ShuffleNetV2: its shuffle's groups are never pruned
        dg = tp.DependencyGraph().build_dependency(m, example_inputs=example)
    with torch.no_grad():
        for name, is_out, idxs in history:
            layer = m.get_submodule(name)
            pruner = dg.get_pruner_of_module(layer)
            group = dg.get_pruning_group(layer, pruner.prune_out_channels if is_out else pruner.prune_in_channels,
                                         idxs)
            for dep, gidxs in group:
                mod = dep.target.module
                if not dg.is_out_channel_pruning_fn(dep.handler) or not isinstance(
                        mod, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                    continue
                mod.weight[list(gidxs)] = 0
                if mod.bias is not None:
                    mod.bias[list(gidxs)] = 0
    return m


@pytest.mark.parametrize("ref", ARCHS)
def test_pruned_model_equals_the_masked_model_exports_and_replays(ref: str, images, tmp_path: Path) -> None:
    x = images[0][:64]
    base = _base(ref, images)
    pruned = copy.deepcopy(base)
    report = prune_model(pruned, x[:1], 0.5)
    assert report.macs_after < report.macs_before
    before, after = conv_linear_macs(base, x[:1]), conv_linear_macs(pruned, x[:1])
    assert after <= 0.6 * before, (after, before)
    history = getattr(pruned, HISTORY_ATTR)
    with torch.no_grad():
        want = masked(base, history, x[:1])(x)
        got = pruned(x)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(got, base(x), rtol=1e-3, atol=1e-4)  # something was really removed

    from edgecompress.runtime.backend import deploy

    onnx = deploy(pruned, x[:1], backend="onnxruntime", threads=1, workdir=tmp_path / "onnx")
    torch.testing.assert_close(torch.as_tensor(onnx.run(x[:8])), got[:8], rtol=1e-3, atol=1e-4)

    save_compressed(pruned, tmp_path / "m.pt", meta={"ref": ref})
    loaded, meta = load_compressed(tmp_path / "m.pt")
    assert meta == {"ref": ref}
    with torch.no_grad():
        assert torch.equal(loaded(x), got)
    assert count_macs_params(loaded, x[:1]) == count_macs_params(pruned, x[:1])


def train_prune_finetune(ref: str, x: torch.Tensor, y: torch.Tensor, base_epochs: int = BASE_EPOCHS,
                         finetune_epochs: int = FINETUNE_EPOCHS) -> tuple[float, float]:
    """Train the model on the first 4000 images, prune every stage at 0.5, fine-tune; returns (fp32 accuracy on
    the last 400 images, int8 ONNX top-1 agreement with fp32 on them)."""
    from edgecompress.evaluators.splits import TensorSplit
    from edgecompress.evaluators.train import TrainSettings, train_model
    from edgecompress.runtime.backend import deploy

    model = _base(ref, (x, y))
    split = TensorSplit((x[:4000] * 0.353 + 0.286).mul(255).round().clamp(0, 255).to(torch.uint8), y[:4000],
                        (0.286,), (0.353,))

    def fit(epochs: int, lr: float) -> None:
        train_model(model, split, SIZE, TrainSettings(epochs=epochs, batch_size=64, lr=lr, schedule="onecycle",
                                                      augment=False, memory_format="contiguous"))

    fit(base_epochs, 0.1)
    prune_model(model.eval(), x[:1], 0.5)
    fit(finetune_epochs, 0.02)
    model.eval()
    held, labels = x[4000:], y[4000:]
    with torch.no_grad():
        fp32 = model(held).argmax(1)
    int8 = deploy(model, held[:1], backend="onnxruntime", precision="int8", threads=1,
                  calib_batches=[x[i: i + 64] for i in range(0, 512, 64)])
    agree = (torch.as_tensor(int8.run(held)).argmax(1) == fp32).float().mean()
    return float((fp32 == labels).float().mean()), float(agree)


@pytest.mark.parametrize("ref", LEARNING)
def test_pruned_model_learns_and_int8_agrees(ref: str, images) -> None:
    """Trained, pruned at 0.5 and briefly fine-tuned, the model is at least twice chance on 400 held-out real
    images, and its int8 ONNX form agrees with fp32 on >= 97% of them."""
    accuracy, agreement = train_prune_finetune(ref, *images)
    assert accuracy >= 0.2, accuracy
    assert agreement >= 0.97, (agreement, accuracy)


# ---- what is refused, in one line ---------------------------------------------------------------------------
def test_channel_shuffle_layers_are_kept_out_with_the_reason() -> None:
    """ShuffleNetV2 is searched: the convs whose channels go through a shuffle (and Torch-Pruning's unmappable
    split groups) are kept out with their reason; the branches' inner convs are pruned (the slow equivalence
    test checks that pruning against masking)."""
    model = create_model("torchvision:shufflenet_v2_x0_5", num_classes=10, in_chans=1, input_size=SIZE)
    struct = attach_structure(model, 1, SIZE)
    assert "channel shuffle" in struct.kept_out["stage2.0.branch2.5"]
    assert "channel shuffle" in struct.kept_out["stage3.0.branch1.0"]  # the downsampling branch feeds it too
    pruned = [n for st in struct.stages for n in st.layers]
    assert "stage2.1.branch2.0" in pruned and "stage4.2.branch2.3" in pruned
    assert not set(pruned) & set(struct.kept_out)


def test_attention_model_is_refused() -> None:
    model = create_model("torchvision.models:VisionTransformer", num_classes=10, in_chans=3, input_size=64,
                         image_size=64, patch_size=16, num_layers=1, hidden_dim=32, mlp_dim=32, num_heads=2)
    with pytest.raises(CompressionError, match="uses attention"):
        attach_structure(model, 3, 64)


def test_inception_style_auxiliary_output_is_refused() -> None:
    with pytest.raises(ModelError, match="returns InceptionOutputs in train mode"):
        create_model("torchvision:inception_v3", num_classes=10, in_chans=3, input_size=299, init_weights=False)


@pytest.mark.parametrize(("ref", "says"), [
    ("no_such_pkg.mod:build", "cannot import module 'no_such_pkg.mod'"),
    ("edgecompress.testing:nothing_here", "edgecompress.testing has no attribute 'nothing_here'"),
    ("torchvision:not_a_model", "not a torchvision classification model"),
    ("timm:not_a_model", "timm has no model 'not_a_model'"),
    ("edgecompress.testing:tiny_model", "the factory raised TypeError"),
    ("torch.nn:Identity", "output shape (2, 1, 32, 32) on a batch of 2 is not (N, num_classes) = (2, 10)"),
])
def test_bad_references_are_one_line(ref: str, says: str) -> None:
    with pytest.raises((ModelError, ConfigError)) as e:
        create_model(ref, num_classes=10, in_chans=1, input_size=SIZE)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_callable_not_importable_by_name_is_refused() -> None:
    from edgecompress.spaces.reference import reference_of
    from edgecompress.testing import odd_net

    assert reference_of(odd_net) == "edgecompress.testing:odd_net"
    with pytest.raises(ConfigError, match="cannot be imported by trial processes: define it at the top level"):
        reference_of(lambda num_classes=10: nn.Linear(4, num_classes))

    def local_factory(num_classes: int = 10) -> nn.Module:
        return nn.Linear(4, num_classes)

    with pytest.raises(ConfigError, match="cannot be imported by trial processes"):
        reference_of(local_factory)


def test_first_conv_is_adapted_to_grey_images_and_in_chans_is_passed_where_accepted() -> None:
    tv = create_model("torchvision:resnet18", num_classes=7, in_chans=1, input_size=SIZE)
    assert tv.conv1.in_channels == 1 and tv.fc.out_features == 7
    timm_model = create_model("timm:resnet18", num_classes=7, in_chans=1, input_size=SIZE)
    assert timm_model.conv1.in_channels == 1  # timm built it so: in_chans passed, nothing replaced
