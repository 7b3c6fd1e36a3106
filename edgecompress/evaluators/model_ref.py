"""Models by reference: one grammar for YAML and Python, so that any process (a trial worker, a Ray actor,
`export` next week) rebuilds the same network from a string.

    resnet8                      the zoo (evaluators/models.py)
    torchvision:mobilenet_v3_small   any torchvision classification builder, weights=None
    timm:efficientnet_b0         any timm model, pretrained=False (no hub access)
    package.module:factory       an importable factory (dotted attribute paths allowed: pkg.mod:Class.build)

The factory gets `kwargs`, `num_classes`, and `in_chans` where it accepts them; otherwise the first conv (the
one reading the input, found by running the model) is adapted to the dataset's channels. Every failure is one
line naming the reference and what went wrong.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress.errors import ModelError
from edgecompress.spaces.reference import kind_of, reference_of, resolve


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _call(ref: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's factory raising
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelError(f"model {ref}: the factory raised {type(e).__name__}: {first}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {ref}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _torchvision_builder(ref: str, name: str) -> Callable[..., nn.Module]:
    import torchvision.models as tvm

    classifiers = tvm.list_models(module=tvm)
    if name not in classifiers:
        raise ModelError(f"model {ref}: not a torchvision classification model; valid: {', '.join(classifiers)}")
    return tvm.get_model_builder(name)


def build(ref: str, num_classes: int, in_chans: int, kwargs: dict[str, Any] | None = None,
          pretrained: str | Path | None = None, input_size: int | None = None) -> nn.Module:
    """Build the model `ref` names for `num_classes` outputs on `in_chans`-channel images (eval mode, CPU); its
    output is checked on `input_size` px images (64 when not given)."""
    from edgecompress.evaluators.models import create_model, load_local_weights

    kwargs = dict(kwargs or {})
    user_kwargs = dict(kwargs)
    kind = kind_of(reference_of(ref))
    if kind == "zoo":
        return create_model(ref, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs)
    name = ref.split(":", 1)[1]
    if kind == "torchvision":
        fn = _torchvision_builder(ref, name)
        kwargs.setdefault("weights", None)
        if kwargs["weights"] is not None:
            raise ModelError(f"model {ref}: weights={kwargs['weights']!r} would download; give a local state dict "
                             f"as model.pretrained instead")
    elif kind == "timm":
        try:
            import timm
        except ImportError:
            raise ModelError(f"model {ref}: timm is not installed (`make install` installs it)") from None
        if name not in timm.list_models():
            raise ModelError(f"model {ref}: timm has no model {name!r} (timm.list_models() lists them)")
        fn = timm.create_model
        kwargs = {"model_name": name, "pretrained": False, **kwargs}
    else:
        fn = resolve(*ref.split(":", 1))
        if not callable(fn):
            raise ModelError(f"model {ref}: {name} is a {type(fn).__name__}, not a callable returning a model")
    kwargs["num_classes"] = num_classes
    if not _accepts(fn, "num_classes") and kind == "import":
        kwargs.pop("num_classes")
    own_chans = _accepts(fn, "in_chans") and kind != "torchvision"
    if own_chans:
        kwargs["in_chans"] = in_chans
    model = _call(ref, fn, kwargs)
    if pretrained is not None:
        load_local_weights(model, Path(pretrained))
    if not own_chans:
        adapt_input_channels(model, ref, in_chans, input_size or 64)
    check_output(model, ref, num_classes, in_chans, input_size or 64)
    model.model_ref = ref  # type: ignore[attr-defined]
    model.ec_create_kwargs = user_kwargs  # type: ignore[attr-defined]
    return model.eval()


def first_conv(model: nn.Module, in_chans_hint: int = 3, size: int = 64) -> tuple[str, nn.Conv2d] | None:
    """The conv that reads the model's input (found by running it on a zero image), else the first conv run."""
    convs = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        return None
    order: list[tuple[nn.Module, bool]] = []
    x = torch.zeros(1, in_chans_hint, size, size)

    def hook(m: nn.Module, inputs: tuple[Any, ...]) -> None:
        order.append((m, bool(inputs) and inputs[0] is x))

    handles = [m.register_forward_pre_hook(hook) for m in convs]
    try:
        with torch.no_grad():
            model.eval()(x)
    except Exception:  # noqa: BLE001 - wrong channel count: fall back to module order below
        pass
    finally:
        for h in handles:
            h.remove()
    direct = [m for m, is_input in order if is_input]
    first = direct[0] if direct else (order[0][0] if order else next(iter(convs)))
    return convs[first], first  # type: ignore[return-value]


def adapt_input_channels(model: nn.Module, ref: str, in_chans: int, size: int = 64) -> None:
    """Replace the first conv when it reads another number of channels (mean of its filters, as for grey images
    from an RGB model)."""
    found = first_conv(model, size=size)
    if found is None:
        raise ModelError(f"model {ref}: no Conv2d found, so it is not an image classifier the search can compress")
    name, conv = found
    if conv.in_channels == in_chans:
        return
    if conv.groups != 1:
        raise ModelError(f"model {ref}: its first conv {name!r} is grouped and reads {conv.in_channels} channels; "
                         f"the dataset has {in_chans} (pass in_chans through model.kwargs)")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(conv.weight.mean(dim=1, keepdim=True).repeat(1, in_chans, 1, 1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)


def check_output(model: nn.Module, ref: str, num_classes: int, in_chans: int, size: int = 64) -> None:
    """One forward in eval and in train mode must give a (N, num_classes) tensor (an Inception-style auxiliary
    output in training is refused: the trainer needs one logits tensor)."""
    import copy

    x = torch.randn(2, in_chans, size, size)
    for mode in ("eval", "train"):
        net = model.eval() if mode == "eval" else copy.deepcopy(model).train()  # train mode moves BN statistics
        try:
            with torch.no_grad():
                out = net(x)
        except Exception as e:  # noqa: BLE001 - the user's forward raising
            raise ModelError(f"model {ref}: forward on a {tuple(x.shape)} input failed in {mode} mode: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if not isinstance(out, torch.Tensor):
            raise ModelError(f"model {ref}: returns {type(out).__name__} in {mode} mode, not one logits tensor "
                             f"(Inception-style auxiliary outputs are not supported: build it with aux_logits=False)")
        if tuple(out.shape) != (2, num_classes):
            raise ModelError(f"model {ref}: output shape {tuple(out.shape)} on a batch of 2 is not (N, "
                             f"num_classes) = (2, {num_classes})")
    model.eval()
