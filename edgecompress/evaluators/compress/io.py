"""Save / load compressed (pruned, depth-reduced, fake-quantised) zoo models as plain tensors.

A pruned model no longer matches its architecture, and pickled modules cannot be read with
`torch.load(weights_only=True)`. So the file stores only plain data. A zoo model: the zoo name and create kwargs,
the kept block indices per stage (depth), the shape attributes of every layer (channels, groups, features),
the fake-quant settings, the state dict, and the caller's meta as JSON; loading rebuilds the zoo model,
re-applies depth, resizes every layer to its stored shape. Any other model (torchvision:, timm:, a user's
factory): its reference and kwargs, its discovered structure, the dropped blocks and Torch-Pruning's pruning
history; loading rebuilds it by reference and replays the history through a dependency graph (no layer is edited
by hand). Both then re-apply fake quantisation and load the state dict strictly, so any mismatch fails loudly.
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
from edgecompress.evaluators.compress.depth import DEPTH_ATTR, DROPPED_ATTR, drop_blocks, keep_blocks
from edgecompress.evaluators.compress.prune import HISTORY_ATTR
from edgecompress.evaluators.compress.quantize import FAKE_QUANT_ATTR, apply_fake_quant
from edgecompress.evaluators.graph_trace import shuffle_as_identity
from edgecompress.evaluators.models import classifier_layer, create_model
from edgecompress.evaluators.structure import STRUCTURE_ATTR, ModelStructure, ensure_structure
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
    ref = getattr(model, "model_ref", None)
    if not zoo_name and not ref:
        raise EdgeCompressError(f"cannot save to {path}: model has no reference (build it with create_model)")
    try:
        meta_json = json.dumps(meta or {}, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise EdgeCompressError(f"cannot save to {path}: meta is not JSON-serialisable ({e})") from None
    if not zoo_name:
        blob = _replay_blob(model, ref, create_kwargs, meta_json)
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)
        return path
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


def _replay_blob(model: nn.Module, ref: str, create_kwargs: dict[str, Any] | None, meta_json: str) -> dict:
    struct = ensure_structure(model)
    if create_kwargs is None:
        head = model.get_submodule(struct.classifier)
        classes = head.out_features if isinstance(head, nn.Linear) else head.out_channels
        create_kwargs = {"num_classes": int(classes), "in_chans": struct.in_chans}
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_ref": ref,
        "create_kwargs": {**dict(getattr(model, "ec_create_kwargs", {}) or {}), **dict(create_kwargs)},
        "structure_json": json.dumps(struct.to_dict()),
        "dropped_blocks": list(getattr(model, DROPPED_ATTR, None) or []),
        "pruning_history_json": json.dumps(getattr(model, HISTORY_ATTR, None) or []),
        "fake_quant": getattr(model, FAKE_QUANT_ATTR, None),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta_json": meta_json,
    }


def _replay(blob: dict) -> nn.Module:
    """Rebuild a non-zoo model: by reference, then its dropped blocks, then the pruning history replayed."""
    import torch_pruning as tp

    kwargs = dict(blob["create_kwargs"])
    model = create_model(blob["model_ref"], num_classes=kwargs.pop("num_classes"), in_chans=kwargs.pop("in_chans"),
                         **kwargs)
    struct = ModelStructure.from_dict(json.loads(blob["structure_json"]))
    setattr(model, STRUCTURE_ATTR, struct)
    if blob.get("dropped_blocks"):
        drop_blocks(model, blob["dropped_blocks"])
    history = json.loads(blob["pruning_history_json"])
    if history:
        x = torch.randn(1, struct.in_chans, struct.input_size, struct.input_size)
        with torch.enable_grad(), shuffle_as_identity():
            dg = tp.DependencyGraph().build_dependency(model.eval(), example_inputs=x)
        dg.load_pruning_history([(n, out, idxs) for n, out, idxs in history])
        setattr(model, HISTORY_ATTR, history)
    return model


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
        state = blob["state_dict"]
        if "model_ref" in blob:
            model = _replay(blob)
        else:
            model = create_model(blob["zoo_name"], **blob["create_kwargs"])
            if blob.get("depth_kept"):
                keep_blocks(model, blob["depth_kept"])
            _resize(model, blob["layers"], state)
        fq = blob.get("fake_quant")
        if fq:
            apply_fake_quant(model, fq["w_bits"], fq["a_bits"], qat=fq.get("qat", False))
        model.load_state_dict(state, strict=True)
        meta = json.loads(blob["meta_json"])
    except EdgeCompressError as e:
        raise EdgeCompressError(f"cannot rebuild compressed model {path}: {e}") from None
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError, IndexError) as e:
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
