"""The zoo's structure is what it was before stages came from the dependency graph: per model, the layers of
each stage, the depth blocks, the largest prune ratios and the channels kept at 0.5 equal the snapshot taken
with the attribute-based code (data/zoo_structure.json, written by data/make_zoo_structure.py at that commit),
and the example configs hash as before (new model fields left unset stay out of the hashes)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from edgecompress.evaluators.compress.depth import stage_blocks
from edgecompress.evaluators.compress.prune import _stage_layer_groups, prune_limits, prune_model
from edgecompress.evaluators.models import create_model

SNAPSHOT = json.loads((Path(__file__).parent / "data" / "zoo_structure.json").read_text())
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("key", sorted(SNAPSHOT["models"]))
def test_zoo_structure_is_unchanged(key: str) -> None:
    name, chans = key.rsplit("-", 1)
    in_chans = int(chans.removesuffix("ch"))
    size = 28 if in_chans == 1 else 32
    want = SNAPSHOT["models"][key]
    m = create_model(name, num_classes=10, in_chans=in_chans).eval()
    names = {id(x): n for n, x in m.named_modules()}
    x = torch.randn(1, in_chans, size, size)
    assert [[names[id(layer)] for layer in g] for g in _stage_layer_groups(m, x)] == want["stage_layers"]
    assert stage_blocks(m) == want["stage_blocks"]
    assert [[lim.ratio, lim.layer] for lim in prune_limits(m, 8, x)] == want["prune_limits_round8"]
    p = copy.deepcopy(m)
    prune_model(p, x, 0.5, round_to=8)
    got = {n: (mod.out_channels if isinstance(mod, torch.nn.Conv2d) else mod.out_features)
           for n, mod in p.named_modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))}
    assert got == want["channels_at_0.5_round8"]


def test_example_configs_hash_as_before() -> None:
    from edgecompress.search.study_setup import experiment_hash
    from edgecompress.spaces import load_experiment

    for path, (exp_hash, base_key) in SNAPSHOT["experiment_hashes"].items():
        exp = load_experiment(REPO / path)
        assert (experiment_hash(exp), exp.base_key()) == (exp_hash, base_key), path
