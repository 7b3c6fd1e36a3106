"""Save / load compressed (pruned, depth-reduced, fake-quantised) zoo models as plain tensors.

A pruned model no longer matches its zoo architecture, and pickled modules cannot be read with
`torch.load(weights_only=True)`. So the file stores only plain data: the zoo name and create kwargs, the
kept block indices per stage (depth), the shape attributes of every layer (channels, groups, features),
the fake-quant settings, the state dict, and the caller's meta as JSON. Loading rebuilds the zoo model,
re-applies depth, resizes every layer to its stored shape, re-applies fake quantisation and loads the
state dict strictly, so any mismatch fails loudly instead of silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.compress.depth import DEPTH_ATTR, keep_blocks
from edgecompress.evaluators.compress.quantize import FAKE_QUANT_ATTR, apply_fake_quant
from edgecompress.evaluators.models import classifier_layer, create_model
from edgecompress.utils import atomic_path

FORMAT = "edgecompress.compressed-model"
VERSION = 1
_SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features")


def _layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    shapes: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        attrs = {a: getattr(module, a) for a in _SHAPE_ATTRS if isinstance(getattr(module, a, None), int)}
        if attrs:
            shapes[name] = attrs
    return shapes


def _create_kwargs(model: nn.Module) -> dict[str, int]:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    head = classifier_layer(model)
    if first is None or not isinstance(head, nn.Linear):
        raise EdgeCompressError(f"cannot save {type(model).__name__}: no input conv or linear classifier")
    return {"num_classes": int(head.out_features), "in_chans": int(first.in_channels)}


def save_compressed(
    model: nn.Module,
    path: str | os.PathLike[str],
    meta: dict[str, Any] | None = None,
    create_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (a zoo model, possibly compressed) and JSON-serialisable `meta` atomically to `path`."""
    path = Path(path)
    zoo_name = getattr(model, "zoo_name", None)
    if not zoo_name:
        raise EdgeCompressError(f"cannot save to {path}: model has no zoo_name (build it with create_model)")
    try:
        meta_json = json.dumps(meta or {}, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise EdgeCompressError(f"cannot save to {path}: meta is not JSON-serialisable ({e})") from None
    blob = {
        "format": FORMAT,
        "version": VERSION,
        "zoo_name": str(zoo_name),
        "create_kwargs": dict(create_kwargs) if create_kwargs is not None else _create_kwargs(model),
        "depth_kept": getattr(model, DEPTH_ATTR, None),
        "fake_quant": getattr(model, FAKE_QUANT_ATTR, None),
        "layers": _layer_shapes(model),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta_json": meta_json,
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def _resize(model: nn.Module, layers: dict[str, dict[str, int]], state: dict[str, torch.Tensor]) -> None:
    """Give every layer its stored shape attributes and tensors of the stored shapes (values loaded later)."""
    for name, module in model.named_modules():
        for attr, value in layers.get(name, {}).items():
            setattr(module, attr, value)
        prefix = f"{name}." if name else ""
        for pname, param in list(module._parameters.items()):
            key = prefix + pname
            if param is not None and key in state and state[key].shape != param.shape:
                module._parameters[pname] = nn.Parameter(
                    torch.empty(state[key].shape, dtype=param.dtype), requires_grad=param.requires_grad
                )
        for bname, buf in list(module._buffers.items()):
            key = prefix + bname
            if buf is not None and key in state and state[key].shape != buf.shape:
                module._buffers[bname] = torch.empty(state[key].shape, dtype=buf.dtype)


def load_compressed(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model written by `save_compressed` (eval mode, CPU); returns (model, meta)."""
    path = Path(path)
    if not path.is_file():
        raise EdgeCompressError(f"compressed model not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated / corrupt / not a torch file
        raise EdgeCompressError(f"cannot read compressed model {path}: {type(e).__name__}: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise EdgeCompressError(f"{path} is not an edgecompress compressed model")
    if blob.get("version") != VERSION:
        raise EdgeCompressError(f"{path}: format version {blob.get('version')} is not {VERSION}")
    try:
        model = create_model(blob["zoo_name"], **blob["create_kwargs"])
        if blob.get("depth_kept"):
            keep_blocks(model, blob["depth_kept"])
        state = blob["state_dict"]
        _resize(model, blob["layers"], state)
        fq = blob.get("fake_quant")
        if fq:
            apply_fake_quant(model, fq["w_bits"], fq["a_bits"], qat=fq.get("qat", False))
        model.load_state_dict(state, strict=True)
        meta = json.loads(blob["meta_json"])
    except EdgeCompressError as e:
        raise EdgeCompressError(f"cannot rebuild compressed model {path}: {e}") from None
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise EdgeCompressError(
            f"cannot rebuild compressed model {path}: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from None
    return model.eval(), meta


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of a model's weights (every state-dict tensor's name, shape, dtype and bytes, in order):
    names a trained model independently of how it is serialised (model.pt, TorchScript, ONNX source)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()
