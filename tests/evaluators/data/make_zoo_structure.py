"""Snapshot of the zoo's structure as the attribute-based code found it (before graph discovery): run once at
commit 36165db from the repository root; tests/evaluators/test_zoo_pinned.py checks the code still agrees."""

import copy
import glob
import json

import torch

from edgecompress.evaluators.compress.depth import stage_blocks
from edgecompress.evaluators.compress.prune import _stage_layer_groups, prune_limits, prune_model
from edgecompress.evaluators.models import create_model, list_models
from edgecompress.search.study_setup import experiment_hash
from edgecompress.spaces import load_experiment

out: dict = {"models": {}, "experiment_hashes": {}}
for name in list_models():
    for in_chans, size in ((1, 28), (3, 32)):
        m = create_model(name, num_classes=10, in_chans=in_chans).eval()
        names = {id(x): n for n, x in m.named_modules()}
        x = torch.randn(1, in_chans, size, size)
        entry = {"stage_layers": [[names[id(layer)] for layer in g] for g in _stage_layer_groups(m)],
                 "stage_blocks": stage_blocks(m),
                 "prune_limits_round8": [[lim.ratio, lim.layer] for lim in prune_limits(m, 8)]}
        p = copy.deepcopy(m)
        prune_model(p, x, 0.5, round_to=8)
        entry["channels_at_0.5_round8"] = {
            n: (mod.out_channels if isinstance(mod, torch.nn.Conv2d) else mod.out_features)
            for n, mod in p.named_modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))}
        out["models"][f"{name}-{in_chans}ch"] = entry
for f in sorted(glob.glob("configs/*.yaml")):
    e = load_experiment(f)
    out["experiment_hashes"][f] = [experiment_hash(e), e.base_key()]
with open("tests/evaluators/data/zoo_structure.json", "w") as fh:
    json.dump(out, fh, indent=1, sort_keys=True)
