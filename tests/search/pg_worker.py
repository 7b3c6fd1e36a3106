"""One independent search worker for the PostgreSQL tests and bench/scale.py: `python pg_worker.py JSON`.

JSON: study, url, trials, log (the evaluator's call log), delay (seconds per trial), artefacts (store),
and optionally raise ("all": the evaluator raises on every call), prune_high, small_grid (a 4-point space).
It runs run_search with the search tests' FakeEvaluator (sleep-based cost, real artefact files) in its own
working folder.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("search_fakes", Path(__file__).with_name("conftest.py"))
fakes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fakes)


class Raising(fakes.FakeEvaluator):
    """Every evaluation raises (a bug on this worker's machine): its trials fail, the study goes on."""

    def __call__(self, config, artefact_dir=None, on_epoch=None):  # noqa: ANN001, ANN204
        super().__call__(config, None, None)
        raise RuntimeError("boom on this worker")


def main() -> None:
    from edgecompress.search import run_search

    a = json.loads(sys.argv[1])
    cls = Raising if a.get("raise") == "all" else fakes.FakeEvaluator
    ev = cls(Path(a["log"]), delay=float(a.get("delay", 0.0)), epochs=1)
    space = {"prune": {"low": 0.0, "high": float(a.get("prune_high", 0.7))}}
    if a.get("small_grid"):  # 4 discrete configs: workers drawing more trials than that must share them
        space = {"prune": {"choices": [0.0, 0.5]}, "bits": {"choices": [32, 8]}, "resolution": {"choices": [1.0]}}
    exp = fakes.small_experiment(budget={"sampler": "random", "enqueue_uncompressed": False}, space=space)
    s = run_search(exp, a["study"], storage=a["url"], trials=int(a["trials"]), evaluator=ev,
                   artefacts=a.get("artefacts"))
    print(json.dumps({"finished": s.stats.finished, "new": s.new_trials}))


if __name__ == "__main__":
    main()
