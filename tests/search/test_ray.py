"""Ray Tune backend: 4 trials, 2 at a time, on local Ray; every trial lands in the Optuna study."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from optuna.trial import TrialState

from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.search.progress import is_counted
from edgecompress.study import load_study


def test_ray_backend_writes_trials_into_the_study(fakes, tmp_path: Path, runs: Path) -> None:
    import ray.cloudpickle

    from edgecompress.search.ray_runner import run_ray_search

    ray.cloudpickle.register_pickle_by_value(sys.modules[fakes.FakeEvaluator.__module__])
    spans = tmp_path / "spans.jsonl"

    class Timed(fakes.FakeEvaluator):
        def __call__(self, config, artefact_dir=None, on_epoch=None):  # noqa: ANN001, ANN204
            start = time.time()
            written = []

            def record() -> None:
                if not written:  # ASHA may stop the trial inside on_epoch: record the span before that
                    written.append(1)
                    with open(spans, "a") as f:
                        f.write(json.dumps([start, time.time()]) + "\n")

            def epoch_cb(epoch, acc):  # noqa: ANN001, ANN202
                record()
                if on_epoch is not None:
                    on_epoch(epoch, acc)

            out = super().__call__(config, artefact_dir, epoch_cb)
            record()
            return out

    # continuous prune ratio: no duplicate configs, so all 4 trials really run (none served from the cache)
    exp = fakes.small_experiment(budget={"sampler": "random"}, space={"prune": {"low": 0.0, "high": 0.7}})
    # 4 s per trial: long enough that the two concurrent workers overlap even when their start-up is slow
    evaluator = Timed(tmp_path / "calls.log", delay=4.0, epochs=1)
    summary = run_ray_search(exp, "ray", trials=4, max_concurrent=2, evaluator=evaluator, seed=0)
    study = load_study("ray")
    reasons = [t.user_attrs.get("fail_reason") for t in study.trials if t.state == TrialState.FAIL]
    assert not reasons, reasons
    assert summary.backend == "ray" and summary.stats.finished == 4
    assert len(study.trials) == 4 and all(is_counted(t) for t in study.trials)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete, "ASHA may stop some trials, not all"
    for t in complete:
        assert len(t.values) == 2 and t.user_attrs["state_detail"] in ("complete", "infeasible")
        assert t.user_attrs["config"]["prune"] == t.params["prune"] and "config_hash" in t.user_attrs
        folder = Path(t.user_attrs["artefact_dir"])
        assert folder == runs / "ray" / "trials" / str(t.number)
        assert all((folder / n).is_file() for n in ARTEFACT_FILES.values())
        assert t.params == {k: t.params[k] for k in ("prune", "depth", "w_bits", "resolution")}
    assert study.metric_names[0] == "accuracy" and study.user_attrs["backend"] == "ray"
    intervals = [json.loads(line) for line in spans.read_text().splitlines()]
    overlap = max(sum(s <= t0 < e for s, e in intervals) for t0, _ in intervals)
    assert overlap == 2, (intervals, [(t.params, t.user_attrs.get("cached_from")) for t in study.trials])
