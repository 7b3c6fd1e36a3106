"""What a search will act on, before it runs: `edgecompress inspect CONFIG` (and `inspect_experiment` in Python).

The same path as the search itself (study_setup.space_for): the model built by reference at the dataset's
channels and native size, its structure discovered from the graph, the largest prune ratio per stage that keeps
every layer, and each axis of the config's space checked against the model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from edgecompress.errors import ConfigError
from edgecompress.spaces.experiment import ExperimentConfig


def _channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def inspect_experiment(exp: ExperimentConfig) -> dict[str, Any]:
    """A JSON-able description: model, input, stages (layers, channels, blocks, prune limit), classifier, layers
    kept out and why, smallest input side, MACs and parameters, and which axes apply (with the config's check)."""
    from edgecompress.evaluators.compress import count_macs_params, prune_limits, stage_blocks
    from edgecompress.evaluators.data import data_shape
    from edgecompress.evaluators.models import create_model
    from edgecompress.evaluators.structure import attach_structure, check_axes

    in_chans, size = data_shape(exp.dataset)
    model = create_model(exp.model.name, num_classes=10, in_chans=in_chans, input_size=size, **exp.model.kwargs)
    struct = attach_structure(model, in_chans, size, stages=exp.model.stages, ignored_layers=exp.model.ignored_layers)
    macs, params = count_macs_params(model, torch.zeros(1, in_chans, size, size))
    limits = prune_limits(model, exp.space.round_to)
    blocks = stage_blocks(model)
    stages = []
    for st, lim, nb in zip(struct.stages, limits, blocks, strict=True):
        layers = [(n, _channels(model.get_submodule(n))) for n in st.layers]
        droppable = [b for r in st.runs for b in r] if not st.module else [f"{st.module} ({nb - 1} by position)"]
        stages.append({"name": st.name, "size": st.size, "layers": [n for n, _ in layers],
                       "channels": sum(c for _, c in layers), "blocks": nb, "droppable": droppable,
                       "prune_limit": round(lim.ratio, 4), "prune_limit_layer": lim.layer})
    try:
        check_axes(struct, exp.space, size)
        space_check = None
    except ConfigError as e:
        space_check = str(e)
    return {
        "model": exp.model.name, "dataset": exp.dataset.name, "in_chans": in_chans, "input_size": size,
        "structure_source": struct.source, "stages": stages, "classifier": struct.classifier,
        "kept_out": struct.kept_out, "min_input": struct.min_input, "macs": macs, "params": params,
        "cam_layer": struct.cam_layer, "axes": struct.axes(), "space_check": space_check,
    }
