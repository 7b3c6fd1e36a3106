"""Model zoo (timm-style registry): CIFAR-style ResNets and adapted torchvision models.

Every model exposes its residual stages through `model_stages(model)` so depth and width compression
can address them uniformly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.errors import EdgeCompressError, ModelError
from edgecompress.registry import Registry

_MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    return _MODELS.register()(fn)


def list_models() -> list[str]:
    return _MODELS.names()


def create_model(
    name: str | Callable[..., nn.Module],
    num_classes: int = 10,
    in_chans: int = 3,
    pretrained: str | Path | None = None,
    input_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by reference: a zoo name, `torchvision:NAME`, `timm:NAME`, `package.module:factory` or an
    importable callable (evaluators/model_ref.py); `pretrained` is a local state-dict file (or, for the zoo's
    torchvision models, "torchvision"); a non-zoo model's output is checked on `input_size` px images."""
    from edgecompress.spaces.reference import kind_of, reference_of

    ref = reference_of(name)
    if kind_of(ref) != "zoo":
        from edgecompress.evaluators.model_ref import build

        return build(ref, num_classes, in_chans, kwargs, pretrained, input_size)
    factory = _MODELS.get(ref)
    try:
        model = factory(num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError) as e:  # model.kwargs it does not take, or values it rejects (argument checks)
        raise ModelError(f"model {ref} with kwargs {kwargs}: {e}") from None
    model.zoo_name = ref  # type: ignore[attr-defined]
    if pretrained is not None and str(pretrained) != "torchvision":
        load_local_weights(model, Path(pretrained))
    return model


def load_local_weights(model: nn.Module, path: Path) -> None:
    """Load a local state dict (weights_only); the classifier is skipped if its shape differs."""
    if not path.is_file():
        raise EdgeCompressError(f"pretrained weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt file, wrong format
        raise EdgeCompressError(f"cannot read pretrained weights {path}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    non_head = [k for k in missing if not k.startswith(("fc.", "classifier.", "linear."))]
    if non_head:
        raise EdgeCompressError(
            f"pretrained weights {path} do not match the model: {len(non_head)} tensors missing or "
            f"mis-shaped, first {non_head[0]!r}"
        )
    model.load_state_dict(usable, strict=False)


# ---- CIFAR-style ResNet -------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """3x3-3x3 residual block; a 1x1 projection shortcut when shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for small (28-32 px) inputs: 3x3 stem, one stage per width, global pooling."""

    def __init__(
        self,
        depths: tuple[int, ...] = (1, 1, 1),
        widths: tuple[int, ...] = (16, 32, 64),
        num_classes: int = 10,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(depths) != len(widths):
            raise ValueError(f"depths {depths} and widths {widths} must have the same length")
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        in_ch = widths[0]
        for i, (d, w) in enumerate(zip(depths, widths)):
            blocks = [BasicBlock(in_ch, w, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(w, w) for _ in range(d - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = w
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.stages(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _cifar(depths: tuple[int, ...], **kw: Any) -> CifarResNet:
    kw.pop("pretrained", None)
    widths = tuple(kw.pop("widths", (16, 32, 64)))
    return CifarResNet(depths=depths, widths=widths, **kw)


@register_model
def resnet8(**kw: Any) -> nn.Module:
    return _cifar((1, 1, 1), **kw)


@register_model
def resnet20(**kw: Any) -> nn.Module:
    return _cifar((3, 3, 3), **kw)


@register_model
def resnet56(**kw: Any) -> nn.Module:
    return _cifar((9, 9, 9), **kw)


# ---- torchvision models -------------------------------------------------------------------------
def _tv(builder: str, weights_enum: str, num_classes: int, in_chans: int, pretrained: Any) -> nn.Module:
    import torchvision.models as tvm

    weights = getattr(tvm, weights_enum).DEFAULT if str(pretrained) == "torchvision" else None
    model = getattr(tvm, builder)(weights=weights)
    _adapt_stem(model, in_chans)
    _adapt_head(model, num_classes)
    return model


def _adapt_stem(model: nn.Module, in_chans: int) -> None:
    """Replace the first conv when the input is not RGB (mean of the RGB filters when pretrained)."""
    if in_chans == 3:
        return
    if hasattr(model, "conv1"):
        parent, attr, old = model, "conv1", model.conv1
    else:  # mobilenet_v2: features[0][0]
        parent, attr, old = model.features[0], "0", model.features[0][0]
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    with torch.no_grad():
        new.weight.copy_(old.weight.mean(dim=1, keepdim=True).repeat(1, in_chans, 1, 1))
    setattr(parent, attr, new)


def _adapt_head(model: nn.Module, num_classes: int) -> None:
    if hasattr(model, "fc"):
        if model.fc.out_features != num_classes:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        last = model.classifier[-1]
        if last.out_features != num_classes:
            model.classifier[-1] = nn.Linear(last.in_features, num_classes)


@register_model
def resnet18(num_classes: int = 1000, in_chans: int = 3, pretrained: Any = None) -> nn.Module:
    return _tv("resnet18", "ResNet18_Weights", num_classes, in_chans, pretrained)


@register_model
def resnet50(num_classes: int = 1000, in_chans: int = 3, pretrained: Any = None) -> nn.Module:
    return _tv("resnet50", "ResNet50_Weights", num_classes, in_chans, pretrained)


@register_model
def mobilenet_v2(num_classes: int = 1000, in_chans: int = 3, pretrained: Any = None) -> nn.Module:
    return _tv("mobilenet_v2", "MobileNet_V2_Weights", num_classes, in_chans, pretrained)


# ---- structure helpers --------------------------------------------------------------------------
def model_stages(model: nn.Module) -> list[nn.Sequential]:
    """The residual stages of a zoo model, in order (each an nn.Sequential of blocks)."""
    if isinstance(model, CifarResNet):
        return list(model.stages)
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return [getattr(model, f"layer{i}") for i in range(1, 5)]
    if hasattr(model, "features") and isinstance(model.features, nn.Sequential):
        return [model.features]  # mobilenet_v2: one sequence of inverted residuals
    raise EdgeCompressError(f"model {type(model).__name__} has no known stage structure")


def classifier_layer(model: nn.Module) -> nn.Module:
    """The final classifier (kept out of pruning)."""
    if hasattr(model, "fc"):
        return model.fc
    if hasattr(model, "classifier"):
        return model.classifier[-1]
    raise EdgeCompressError(f"model {type(model).__name__} has no known classifier layer")
