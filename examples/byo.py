"""Bring your own model from Python: inspect it, search it, print the front. Run from the repository root:
`PYTHONPATH=examples .venv/bin/python examples/byo.py` (the factory must be importable by trial processes)."""

import mynet  # noqa: F401 - importable by name: trial processes import `mynet:build` the same way

import edgecompress as ec
from edgecompress.search.inspect import inspect_experiment

exp = ec.load_experiment("examples/byo.yaml")
info = inspect_experiment(exp)
for stage in info["stages"]:
    print(f"{stage['name']}: {len(stage['layers'])} layers, {stage['channels']} channels, "
          f"max prune {stage['prune_limit']:.2f}")
print("kept out:", info["kept_out"])
ec.run_search(exp, "byo-example", trials=4)
print(ec.front(ec.study_to_frame(ec.load_study("byo-example"))))
