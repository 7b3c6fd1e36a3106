"""Width compression: structured channel pruning through Torch-Pruning 1.6's dependency graph.

Each stage of the model's structure (evaluators/structure.py: channel groups by feature-map side, or a zoo
model's registered stages) gets its own ratio; every layer of a group is pruned at its stage's ratio, coupled
channels (residual additions, depthwise convs, concatenations) are pruned together by the dependency graph, and
the layers kept out (the classifier, channel shuffles) are never pruned.
`round_to` rounds kept channel counts DOWN to a multiple, so the achieved ratio is measured and reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from edgecompress.errors import CompressionError
from edgecompress.evaluators.graph_trace import shuffle_as_identity
from edgecompress.evaluators.structure import ensure_structure, find_module, model_label

Importance = Literal["magnitude", "taylor"]
#: attribute of a pruned model: Torch-Pruning's pruning history [[layer, out-channels?, indices], ...], replayed
#: by compress/io.py to rebuild a non-zoo model
HISTORY_ATTR = "ec_pruning_history"


@dataclass
class PruneReport:
    """MACs/params before and after, asked per-stage ratios and the achieved channel ratio."""

    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    achieved_ratio: float  # 1 - kept/original output channels over the prunable layers of the stages
    ratio_asked: list[float]
    achieved_per_stage: list[float] = field(default_factory=list)
    round_to: int | None = None
    importance: str = "magnitude"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """MACs (Torch-Pruning's counter: convs, linears, norms, pooling) and parameter count."""
    was_training = model.training
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was_training)
    return int(macs), int(params)


def _layers(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """The named layers that still exist (depth may have dropped some blocks)."""
    return [m for m in (find_module(model, n) for n in names) if m is not None]


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def _stage_layer_groups(model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[list[nn.Module]]:
    """Prunable layers per stage (every out-channel layer of the stage's channel groups)."""
    return [_layers(model, st.layers) for st in ensure_structure(model, example_inputs).stages]


def _kept_out(model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[nn.Module]:
    struct = ensure_structure(model, example_inputs)
    return _layers(model, [struct.classifier, *struct.kept_out])


def _importance(kind: str) -> tp.importance.Importance:
    if kind == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise CompressionError(f"unknown pruning importance {kind!r} (expected 'magnitude' or 'taylor')")


def _taylor_gradients(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """One cross-entropy backward pass on `batch` (eval mode, so BN statistics stay untouched)."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    x, y = batch
    with torch.enable_grad():
        F.cross_entropy(model(x), y).backward()
    model.train(was_training)


def _kept_channels(n: int, ratio: float, round_to: int | None) -> int:
    """Channels Torch-Pruning keeps of `n` at `ratio` (its formula: floor, then round down to round_to)."""
    kept = int(n * (1 - ratio))
    if round_to:
        kept -= kept % round_to
    return kept


class PruneLimit(NamedTuple):
    """The largest ratio a stage can be pruned at without emptying a layer, and the layer that sets it."""

    ratio: float
    layer: str
    channels: int


def prune_limits(model: nn.Module, round_to: int | None = None,
                 example_inputs: torch.Tensor | None = None) -> list[PruneLimit]:
    """Per stage (stem with stage 0), the largest ratio keeping max(1, round_to) channels in every layer:
    Torch-Pruning keeps int(n * (1 - r)) rounded down to round_to, so a layer of n channels allows
    r <= 1 - k / n (the ratio is nudged down so that float rounding still keeps the k channels)."""
    k = max(1, round_to or 1)
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for layers in _stage_layer_groups(model, example_inputs):
        best = PruneLimit(1.0, "", 0)
        for m in layers:
            n = _out_channels(m)
            if n <= 1:
                continue
            r = 0.0 if n < k else 1.0 - k / n
            while r > 0 and _kept_channels(n, r, round_to) < k:
                r = math.nextafter(r, 0.0)
            if r < best.ratio:
                best = PruneLimit(r, names.get(id(m), type(m).__name__), n)
        out.append(best)
    return out


def _check_plan(
    layer_groups: list[list[nn.Module]], ratios: list[float], round_to: int | None, names: dict[int, str]
) -> None:
    """Refuse a ratio that would remove every channel of a layer (Torch-Pruning would silently skip it)."""
    for s, (layers, r) in enumerate(zip(layer_groups, ratios, strict=True)):
        if r <= 0:
            continue
        for m in layers:
            n = _out_channels(m)
            if n > 1 and _kept_channels(n, r, round_to) < 1:
                rt = f" with round_to={round_to}" if round_to else ""
                raise CompressionError(
                    f"pruning ratio {r}{rt} would remove all {n} output channels of layer "
                    f"{names.get(id(m), type(m).__name__)!r} (stage {s})"
                )


def prune_model(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratios: float | list[float],
    round_to: int | None = None,
    importance: Importance = "magnitude",
    taylor_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PruneReport:
    """Prune `model` IN PLACE: `ratios` is one ratio or one per stage (stem follows stage 0).

    Raises CompressionError naming the layer when a ratio would empty a layer or Torch-Pruning fails.
    """
    stages = ensure_structure(model, example_inputs).stages
    if isinstance(ratios, (int, float)):
        per_stage = [float(ratios)] * len(stages)
    else:
        per_stage = [float(r) for r in ratios]
    if len(per_stage) != len(stages):
        raise CompressionError(f"prune: {len(per_stage)} ratios given for a model with {len(stages)} stages")
    for r in per_stage:
        if not 0.0 <= r < 1.0:
            raise CompressionError(f"prune: ratio must be in [0, 1), got {r}")
    if round_to is not None and round_to < 1:
        raise CompressionError(f"prune: round_to must be >= 1, got {round_to}")
    if importance == "taylor" and taylor_batch is None:
        raise CompressionError("prune: importance 'taylor' needs taylor_batch=(x, y)")
    imp = _importance(importance)

    layer_groups = _stage_layer_groups(model, example_inputs)
    before_ch = [[_out_channels(m) for m in g] for g in layer_groups]
    macs_before, params_before = count_macs_params(model, example_inputs)
    names = {id(m): n for n, m in model.named_modules()}
    _check_plan(layer_groups, per_stage, round_to, names)

    if any(r > 0 for r in per_stage):
        ratio_dict: dict[nn.Module, float] = {}
        for layers, r in zip(layer_groups, per_stage, strict=True):
            for m in layers:
                ratio_dict[m] = r
        was_training = model.training
        model.eval()
        try:
            with shuffle_as_identity():
                pruner = tp.pruner.BasePruner(
                    model,
                    example_inputs,
                    importance=imp,
                    pruning_ratio=0.0,
                    pruning_ratio_dict=ratio_dict,
                    ignored_layers=_kept_out(model, example_inputs),
                    round_to=round_to,
                )
            if importance == "taylor":
                assert taylor_batch is not None
                _taylor_gradients(model, taylor_batch)
            groups = pruner.step(interactive=True)
        except Exception as e:  # noqa: BLE001 - Torch-Pruning cannot trace / handle this model
            raise CompressionError(
                f"Torch-Pruning cannot prune model {model_label(model)}: "
                f"{type(e).__name__}: {e}"
            ) from None
        try:
            # each group is computed after the previous one is pruned: a concatenation's channel offsets move as
            # its inputs shrink (a list of all groups made up front prunes DenseNet's wrong channels)
            for group in groups:
                group.prune()
        except Exception as e:  # noqa: BLE001
            raise CompressionError(f"Torch-Pruning failed while pruning: {type(e).__name__}: {e}") from None
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        # what was removed, as Torch-Pruning records it: a non-zoo model is saved as its reference + this history
        history = [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in pruner.pruning_history()]
        setattr(model, HISTORY_ATTR, list(getattr(model, HISTORY_ATTR, None) or []) + history)

    after_ch = [[_out_channels(m) for m in g] for g in layer_groups]
    macs_after, params_after = count_macs_params(model, example_inputs)
    achieved = [1.0 - sum(a) / sum(b) if sum(b) else 0.0 for a, b in zip(after_ch, before_ch, strict=True)]
    total_b = sum(sum(b) for b in before_ch)
    total_a = sum(sum(a) for a in after_ch)
    return PruneReport(
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=params_after,
        achieved_ratio=1.0 - total_a / total_b if total_b else 0.0,
        ratio_asked=per_stage,
        achieved_per_stage=achieved,
        round_to=round_to,
        importance=importance,
    )
