"""A pruning ratio that would empty a layer is clamped to the largest value of the space its stage allows."""

from __future__ import annotations

import pytest

from edgecompress.errors import ConfigError
from edgecompress.search.study_setup import space_for
from edgecompress.spaces.experiment import SpaceConfig, parse_experiment
from edgecompress.spaces.space import SearchSpace


def test_global_ratio_is_clamped_to_the_largest_grid_value_under_the_tightest_stage() -> None:
    space = SearchSpace(SpaceConfig(prune={"low": 0.0, "high": 0.875, "step": 0.125}), 3, [1, 1, 1])
    params = {"prune": 0.875, "depth": 1.0, "w_bits": 32, "resolution": 1.0}
    assert space.from_params(params).prune == 0.875 and space.prune_clamps(params) == {}  # no limits: as asked
    space.set_prune_limits([0.8333, 0.9167, 0.9583])  # ResNet-8 48/96/192 with round_to 8
    assert space.from_params(params).prune == 0.75
    assert space.prune_clamps(params) == {"prune": [0.875, 0.75]}
    assert space.prune_clamps({**params, "prune": 0.75}) == {}
    assert space.from_params({**params, "prune": 0.5}).prune == 0.5


def test_per_stage_and_continuous_ratios_are_clamped_per_stage() -> None:
    space = SearchSpace(SpaceConfig(prune={"low": 0.0, "high": 0.9}, per_stage_prune=True), 3, [1, 1, 1])
    space.set_prune_limits([0.5, 0.75, 0.875])
    params = {"prune_s0": 0.9, "prune_s1": 0.6, "prune_s2": 0.9, "depth": 1.0, "w_bits": 32, "resolution": 1.0}
    assert space.from_params(params).prune == (0.5, 0.6, 0.875)  # a continuous range clamps to the limit
    assert space.prune_clamps(params) == {"prune_s0": [0.9, 0.5], "prune_s2": [0.9, 0.875]}


def test_a_space_whose_lowest_ratio_empties_a_layer_is_refused() -> None:
    space = SearchSpace(SpaceConfig(prune={"choices": [0.6, 0.8]}), 3, [1, 1, 1])
    with pytest.raises(ConfigError, match=r"space.prune: even its lowest ratio 0.6 would empty a layer"):
        space.set_prune_limits([0.5, 0.75, 0.875])


def test_space_for_takes_the_limits_from_the_model() -> None:
    exp = parse_experiment({"model": {"name": "resnet8", "kwargs": {"widths": [48, 96, 192]}},
                            "space": {"prune": {"low": 0.0, "high": 0.875, "step": 0.125}, "round_to": 8}})
    space = space_for(exp)
    assert space.prune_limits == pytest.approx([1 - 8 / 48, 1 - 8 / 96, 1 - 8 / 192])
    assert space.from_params({"prune": 0.875, "depth": 1.0, "w_bits": 8, "resolution": 1.0}).prune == 0.75
