"""A search whose space reaches a pruning ratio that empties a layer: no failed trial, the clamped trial says so."""

from __future__ import annotations

from edgecompress.search import run_search
from edgecompress.search.progress import describe_trial
from edgecompress.spaces.experiment import parse_experiment
from edgecompress.study import attrs as A
from edgecompress.study import load_study


def test_a_ratio_that_would_empty_a_layer_is_searched_as_the_largest_that_does_not(tiny_pipeline, fmnist_dir) -> None:
    # ResNet-8 8/16/32 with round_to 2: 0.875 keeps int(8 * 0.125) = 1 stem channel, rounded down to 0; the stem
    # allows 0.75, and the space's largest value under that is 0.5
    space = {"prune": {"choices": [0.5, 0.875]}, "bits": {"choices": [32]}, "resolution": {"choices": [0.5]},
             "round_to": 2}
    exp = parse_experiment(tiny_pipeline(name="tiny-clamp", space=space,
                                         budget={"trials": 2, "sampler": "grid", "enqueue_uncompressed": False}))
    run_search(exp, "clamp", trials=2, sampler="grid")
    trials = load_study("clamp").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]  # before: 0.875 failed ("remove all 8")
    by_param = {t.params["prune"]: t for t in trials}
    clamped, plain = by_param[0.875], by_param[0.5]
    assert clamped.user_attrs[A.PRUNE_CLAMPED] == {"prune": [0.875, 0.5]}
    assert clamped.user_attrs[A.CONFIG] == plain.user_attrs[A.CONFIG]
    assert A.PRUNE_CLAMPED not in plain.user_attrs
    # one config: the second trial is served from the first (trained once), whichever the grid drew first
    second = max(trials, key=lambda t: t.number)
    assert second.user_attrs[A.CACHED_FROM] == min(t.number for t in trials)
    assert clamped.values == plain.values
    assert describe_trial(clamped, ["accuracy", "latency_ms"]).endswith("prune 0.875 -> 0.5 (would empty a layer))")
