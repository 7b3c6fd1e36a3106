"""What the search acts on in any nn.Module, found from its graph, never from attribute names.

One forward pass at the dataset's native size and channels, traced two ways: a TorchFunctionMode follows every
tensor's feature-map side (a tensor after global pooling keeps the side it was pooled from), and autograd's
graph tells which modules add their input to their output (residual blocks with an identity shortcut, the
blocks depth may drop). Torch-Pruning's dependency graph gives the channel groups. Each group joins one stage:
the smallest side among its out-channel layers' outputs, so the stem joins stage 0, a downsampling block joins
the stage it produces and squeeze-excitation convs join the block they gate. Layers Torch-Pruning would prune
wrongly are kept out with the reason: the classifier, channel shuffles (a transpose between channel reshapes,
which Torch-Pruning treats as element-wise). Grouped convs are pruned evenly within each group (the group count
stays): tests/evaluators/test_byo_models.py checks that on RegNetX, as every pruning, against masking.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from edgecompress.errors import CompressionError
from edgecompress.evaluators.graph_trace import Tracer, producers, shuffle_as_identity, trace

STRUCTURE_ATTR = "ec_structure"


@dataclass
class Stage:
    """Layers pruned at one ratio, and the residual blocks depth may drop, at one feature-map side."""

    name: str
    size: int
    layers: list[str]
    runs: list[list[str]] = field(default_factory=list)  # droppable blocks, in runs of consecutive siblings
    module: str | None = None  # a zoo stage: the nn.Sequential whose blocks depth counts by position


@dataclass
class ModelStructure:
    """Everything the search needs from a model; JSON-serialisable (stored with the study and each model)."""

    stages: list[Stage]
    classifier: str
    kept_out: dict[str, str]  # layer -> why it is not pruned
    input_size: int
    in_chans: int
    min_input: int
    cam_layer: str | None  # the last feature map before global pooling (CAM boxes for the crop axis)
    flatten_without_pool: str | None = None  # where a spatial map is flattened into a linear layer
    source: str = "graph"  # "graph", "zoo" (registered stage modules) or "override" (model.stages)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelStructure:
        return cls(**{**d, "stages": [Stage(**s) for s in d["stages"]]})

    def axes(self) -> dict[str, str | None]:
        """Per axis: None when it applies, else why not."""
        blocks = sum(len(r) for s in self.stages for r in s.runs)
        depth_ok = blocks > 0 or any(s.module for s in self.stages)
        return {
            "prune": None if any(s.layers for s in self.stages) else "no prunable channel group",
            "depth": None if depth_ok else "no residual block with an identity shortcut to drop",
            "resolution": None if self.flatten_without_pool is None else
            f"{self.flatten_without_pool} flattens a spatial map without global pooling (input size is fixed)",
            "crop": None if self.cam_layer else "no global pooling after a feature map (no CAM boxes)",
        }


# ---- discovery ----------------------------------------------------------------------------------------------
def _out_layers(DG: tp.DependencyGraph, group: Any, names: dict[nn.Module, str]) -> list[str]:
    return [names[dep.target.module] for dep, _ in group
            if DG.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names
            and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))]


def _all_groups(DG: tp.DependencyGraph, model: nn.Module, names: dict[nn.Module, str]
                ) -> tuple[list[list[str]], dict[str, str]]:
    """Every channel group (its out-channel conv/linear layers), as `DG.get_all_groups` finds them, and the
    layers whose group Torch-Pruning cannot map (a split feeding a channel shuffle in ShuffleNetV2) with why."""
    groups: list[list[str]] = []
    unmapped: dict[str, str] = {}
    seen: set[str] = set()
    for m in DG.module2node:
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or names.get(m) in seen or m not in names:
            continue
        pruner = DG.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        try:
            group = DG.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except Exception as e:  # noqa: BLE001 - Torch-Pruning's index mapping failing on this layer's group
            unmapped[names[m]] = f"Torch-Pruning cannot map its channels ({type(e).__name__} in {_tp_frame(e)})"
            seen.add(names[m])
            continue
        outs = _out_layers(DG, group, names)
        seen.update(outs)
        groups.append(outs)
    return groups, unmapped


def _tp_frame(e: Exception) -> str:
    """The innermost Torch-Pruning function a traceback went through (what failed, for the one-line error)."""
    tb, where = e.__traceback__, "torch_pruning"
    while tb is not None:
        if "torch_pruning" in tb.tb_frame.f_code.co_filename:
            where = f"torch_pruning {tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    return where


def _outermost(names: list[str]) -> str | None:
    """Of modules returning the same tensor (a block, its last in-place ReLU, its BatchNorm), the outermost."""
    return min(names, key=lambda n: n.count(".")) if names else None


def _stage_label(layers: list[str]) -> str:
    """`layer2`, or `features.4-8` when the stage's layers share a prefix and differ in a numbered child."""
    prefix = _common_prefix(layers)
    depth = prefix.count(".") + 1 if prefix else 0
    nxt = {n.split(".")[depth] for n in layers if len(n.split(".")) > depth}
    if len(nxt) > 1 and all(v.isdigit() for v in nxt):
        return f"{prefix + '.' if prefix else ''}{min(nxt, key=int)}-{max(nxt, key=int)}"
    if len(nxt) > 1:  # named children: the first and last the stage spans, in module order
        seen = [n.split(".")[depth] for n in layers if len(n.split(".")) > depth]
        return f"{prefix + '.' if prefix else ''}{seen[0]}..{seen[-1]}" if seen[0] != seen[-1] else prefix
    return prefix


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _classifier(out: torch.Tensor, layer_of: dict[int, str]) -> str | None:
    """The layer producing the logits: the first conv/linear output met walking back from the output."""
    found = producers(out, layer_of)
    return sorted(found)[0] if len(found) == 1 else (sorted(found)[-1] if found else None)


def _min_input(model: nn.Module, in_chans: int, size: int) -> int:
    """The smallest square input side the model runs on (binary search; pooling chains need a minimum)."""

    def runs(s: int) -> bool:
        try:
            with torch.no_grad():
                model(torch.zeros(1, in_chans, s, s))
            return True
        except Exception:  # noqa: BLE001 - too small for a pooling / conv chain
            return False

    lo, hi = 1, size
    while lo < hi:
        mid = (lo + hi) // 2
        if runs(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _runs(blocks: list[str], model: nn.Module) -> list[list[str]]:
    """Droppable blocks in runs of consecutive siblings (same parent, adjacent child positions)."""
    runs: list[list[str]] = []
    prev: tuple[str, int] | None = None
    for b in blocks:
        parent, _, child = b.rpartition(".")
        children = [n for n, _ in model.get_submodule(parent).named_children()]
        pos = children.index(child)
        if prev is not None and prev[0] == parent and pos == prev[1] + 1:
            runs[-1].append(b)
        else:
            runs.append([b])
        prev = (parent, pos)
    return runs


def discover(model: nn.Module, in_chans: int, input_size: int, stages: list[str] | None = None,
             ignored_layers: list[str] | None = None, zoo: bool = False) -> ModelStructure:
    """Find the structure of `model` (eval mode, CPU) on a (1, in_chans, input_size, input_size) input.

    `stages` (dotted module names) replace the stages found by feature-map side; `ignored_layers` are kept out.
    `zoo=True` marks `stages` as registered zoo stages (nn.Sequential of blocks; depth counts them by position).
    """
    model.eval()
    names = {m: n for n, m in model.named_modules()}
    layers = {n: m for m, n in names.items() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for given, what in ((stages or [], "model.stages"), (ignored_layers or [], "model.ignored_layers")):
        missing = [n for n in given if n not in {v for v in names.values()}]
        if missing:
            raise CompressionError(f"{what}: no module {missing[0]!r} in {type(model).__name__}")
    x = torch.randn(1, in_chans, input_size, input_size, requires_grad=True)
    t = trace(model, x)
    tracer: Tracer = t["tracer"]
    layer_of = {id(o.grad_fn): n for n, o in t["outputs"].items() if n in layers and o.grad_fn is not None}
    if t["attention"] or tracer.attention:
        where = t["attention"][0] if t["attention"] else tracer.attention
        raise CompressionError(f"model {type(model).__name__} uses attention ({where}): the pruner removes conv/"
                               f"linear channels per stage, not attention heads (ViT-style models are not supported)")
    classifier = _classifier(t["out"], layer_of)
    if classifier is None:
        raise CompressionError(f"model {type(model).__name__}: no conv or linear layer produces its output")
    side = {n: tracer.side[id(o)][0] for n, o in t["outputs"].items() if id(o) in tracer.side}

    kept: dict[str, str] = {classifier: "classifier (produces the logits)"}
    for n in ignored_layers or []:
        kept[n] = "model.ignored_layers"
    shuffled: set[str] = set()
    for s_in in tracer.shuffle_inputs:
        shuffled |= producers(s_in, layer_of)
    for n in sorted(shuffled):
        kept.setdefault(n, "its channels go through a channel shuffle (Torch-Pruning treats it as element-wise "
                           "and would prune wrong channels)")
    reasons = dict(kept)  # the causes; the groups they are in are kept out with them (no cascade)

    try:
        with torch.enable_grad(), shuffle_as_identity():
            DG = tp.DependencyGraph().build_dependency(model, example_inputs=x.detach())
            all_groups, unmapped = _all_groups(DG, model, names)
    except Exception as e:  # noqa: BLE001 - Torch-Pruning's tracer failing on this graph
        shuffle = " (it has a channel shuffle)" if tracer.shuffle_inputs else ""
        raise CompressionError(f"Torch-Pruning cannot build the dependency graph of {type(model).__name__}"
                               f"{shuffle}: {type(e).__name__} in {_tp_frame(e)}") from None
    for n, why in unmapped.items():
        kept.setdefault(n, why)
        reasons.setdefault(n, why)
    groups: list[tuple[list[str], int | None]] = []
    for outs in all_groups:
        culprit = next((n for n in outs if n in reasons), None)
        if culprit is not None:
            why = reasons[culprit]
            for n in outs:
                kept.setdefault(n, why if n == culprit else f"coupled with {culprit}: {why}")
            continue
        sides = [side[n] for n in outs if n in side]
        groups.append((outs, min(sides) if sides else None))

    if stages:
        sizes = [min((side.get(n, 0) for n in layers if n.startswith(st + ".")), default=0) for st in stages]
        found = [Stage(st, sizes[i], [], module=st if zoo else None) for i, st in enumerate(stages)]

        def stage_of(outs: list[str], size: int | None) -> int:
            for i, st in enumerate(stages):
                if any(n == st or n.startswith(st + ".") for n in outs):
                    return i
            return next((i for i, sz in enumerate(sizes) if size is not None and sz <= size), len(stages) - 1)
    else:
        distinct = sorted({sz for _, sz in groups if sz is not None}, reverse=True)
        if not distinct:
            raise CompressionError(f"model {type(model).__name__}: no prunable conv channel group was found")
        found = [Stage(f"stage {i} ({sz} px)", sz, []) for i, sz in enumerate(distinct)]

        def stage_of(outs: list[str], size: int | None) -> int:
            return next((i for i, sz in enumerate(distinct) if size is not None and sz <= size), len(distinct) - 1)

    for outs, size in groups:
        found[stage_of(outs, size)].layers += outs
    order = list(layers)
    for st in found:
        st.layers = sorted(set(st.layers), key=order.index)
        if not stages:
            label = _stage_label(st.layers) if st.layers else ""
            if label:
                st.name = f"{label} ({st.size} px)"
    if not zoo:
        blocks = [n for n in names.values() if n in t["residual"]
                  and not any(o != n and o.startswith(n + ".") for o in t["residual"])]
        for b in blocks:  # forward order is module order for the blocks of one stage
            i = stage_of([b], side.get(b))
            found[i].runs.append([b])
        for st in found:
            st.runs = _runs([b for r in st.runs for b in r], model)
    cam = None
    for pid in tracer.pool_inputs[-1:]:
        cam = _outermost([n for n, o in t["outputs"].items() if id(o) == pid])
        if cam is None:  # pooled after a functional op (densenet: F.relu): the module feeding that op
            src = tracer.side.get(pid, (0, False, None))[2]
            cam = _outermost([n for n, o in t["outputs"].items() if id(o) == src])
    return ModelStructure(
        stages=found, classifier=classifier, kept_out=kept, input_size=input_size, in_chans=in_chans,
        min_input=_min_input(model, in_chans, input_size), cam_layer=cam,
        flatten_without_pool="a reshape before the classifier" if tracer.flatten else None,
        source="zoo" if zoo else ("override" if stages else "graph"))


def find_module(model: nn.Module, name: str) -> nn.Module | None:
    """The module at dotted `name`, or None when it no longer exists (depth dropped its block)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def model_label(model: nn.Module) -> str:
    """How errors name a model: its zoo name or reference, else its class."""
    return getattr(model, "zoo_name", None) or getattr(model, "model_ref", None) or type(model).__name__


def zoo_stages(model: nn.Module) -> list[str] | None:
    """A zoo model's registered stages (dotted names of its nn.Sequential stages), else None."""
    if not getattr(model, "zoo_name", None):
        return None
    from edgecompress.evaluators.models import model_stages

    ids = {id(m): n for n, m in model.named_modules()}
    return [ids[id(st)] for st in model_stages(model)]


def attach_structure(model: nn.Module, in_chans: int, input_size: int, stages: list[str] | None = None,
                     ignored_layers: list[str] | None = None) -> ModelStructure:
    """Discover `model`'s structure at the dataset's size and channels and attach it (deepcopies keep it)."""
    zoo = zoo_stages(model) if stages is None else None
    struct = discover(model, in_chans, input_size, stages=stages or zoo, ignored_layers=ignored_layers,
                      zoo=zoo is not None)
    setattr(model, STRUCTURE_ATTR, struct)
    return struct


def ensure_structure(model: nn.Module, example_inputs: torch.Tensor | None = None) -> ModelStructure:
    """The attached structure; a model built without one is discovered on `example_inputs`' size and channels."""
    found = getattr(model, STRUCTURE_ATTR, None)
    if found is not None:
        return ModelStructure.from_dict(found) if isinstance(found, dict) else found
    if example_inputs is None and getattr(model, "zoo_name", None):  # registered stages: the size only labels them
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        example_inputs = torch.zeros(1, first.in_channels, 32, 32)
    if example_inputs is None:
        raise CompressionError(f"model {model_label(model)} has no discovered structure: build it with "
                               f"edgecompress.create_model or call attach_structure(model, in_chans, size)")
    was_training = model.training
    struct = attach_structure(model, int(example_inputs.shape[1]), int(example_inputs.shape[-1]))
    model.train(was_training)
    return struct


def structure_of(model: nn.Module) -> ModelStructure:
    """The structure attached to `model` when it was built (evaluators.base_model / model_ref) or loaded."""
    found = getattr(model, STRUCTURE_ATTR, None)
    if found is None:
        raise CompressionError(f"model {type(model).__name__} has no discovered structure (build it with "
                               f"edgecompress.create_model or attach_structure)")
    return ModelStructure.from_dict(found) if isinstance(found, dict) else found


def check_axes(struct: ModelStructure, space: Any, native: int) -> None:
    """Refuse, in one line, a search axis the model cannot take (instead of ignoring it): depth < 1 without a
    droppable residual block, a resolution below the model's smallest input side (or any other resolution when a
    spatial map is flattened), the crop axis without a feature map for CAM boxes."""
    from edgecompress.errors import ConfigError

    axes = struct.axes()

    def values(spec: Any) -> list[float]:
        if spec is None:
            return []
        return list(spec.choices) if spec.choices is not None else [spec.low, spec.high]

    if axes["depth"] and any(v < 1.0 for v in values(space.depth)):
        raise ConfigError(f"space.depth {values(space.depth)}: the model has {axes['depth']}")
    res = values(space.resolution)
    if axes["resolution"] and any(v != 1.0 for v in res):
        raise ConfigError(f"space.resolution {res}: {axes['resolution']}")
    low = [v for v in res if max(8, int(round(native * v))) < struct.min_input]
    if low:
        raise ConfigError(f"space.resolution {min(low)} gives {max(8, int(round(native * min(low))))} px, below the "
                          f"model's smallest input side {struct.min_input} px (native {native} px)")
    crop = getattr(space, "crop", None)
    if crop is not None and "dic" in crop.choices and axes["crop"]:
        raise ConfigError(f"space.crop {crop.choices}: {axes['crop']}")
