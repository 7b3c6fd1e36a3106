"""SearchSpace: Optuna suggest, round trips through params, grid/size, Ray form, invalid specs."""

from __future__ import annotations

import optuna
import pytest

from edgecompress.errors import ConfigError
from edgecompress.search.samplers import AskTellGridSampler
from edgecompress.spaces import CompressionConfig, SearchSpace
from edgecompress.spaces.experiment import SpaceConfig


def _space(n_stages: int = 3, blocks: tuple[int, ...] = (3, 3, 3), **cfg: object) -> SearchSpace:
    return SearchSpace.from_config(SpaceConfig(**cfg), n_stages, list(blocks))


def test_suggest_per_stage_gives_valid_configs_with_stage_params() -> None:
    space = _space(per_stage_prune=True, depth={"choices": [0.34, 0.67, 1.0]}, act_bits={"choices": [8, 32]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    configs = []
    for _ in range(20):
        trial = study.ask()
        configs.append(space.suggest(trial))
        assert set(trial.params) == {"prune_s0", "prune_s1", "prune_s2", "depth", "w_bits", "a_bits", "resolution"}
        study.tell(trial, 0.0)
    assert all(isinstance(c.prune, tuple) and len(c.prune) == 3 for c in configs)
    assert {c.w_bits for c in configs} <= {32, 8}
    assert any(isinstance(c.depth, tuple) for c in configs)  # fractions < 1 become blocks per stage


def test_params_round_trip_and_depth_canonical_form() -> None:
    space = _space(depth={"choices": [0.34, 0.67, 1.0]})
    cfg = space.from_params({"prune": 0.3, "depth": 0.67, "w_bits": 8, "resolution": 0.75})
    assert cfg.depth == (2, 2, 2) and cfg.a_bits == 8
    assert space.from_params(space.params_of(cfg)) == cfg
    # on a 1-block-per-stage model every depth fraction is the full network: one config, one hash
    flat = _space(blocks=(1, 1, 1), depth={"choices": [0.5, 1.0]})
    a = flat.from_params({"prune": 0.0, "depth": 0.5, "w_bits": 32, "resolution": 1.0})
    b = flat.from_params({"prune": 0.0, "depth": 1.0, "w_bits": 32, "resolution": 1.0})
    assert a == b and a.config_hash() == b.config_hash() and a.is_uncompressed


def test_params_of_rejects_points_outside_the_space() -> None:
    space = _space(bits={"choices": [8, 4]})
    with pytest.raises(ConfigError, match="w_bits=32"):
        space.params_of(CompressionConfig())
    with pytest.raises(ConfigError, match="per-stage"):
        space.params_of(CompressionConfig(prune=(0.1, 0.2, 0.3)))


def test_grid_and_size_enumerate_steps() -> None:
    space = _space(prune={"low": 0.0, "high": 0.5, "step": 0.25})
    grid = space.grid()
    assert grid["prune"] == [0.0, 0.25, 0.5]
    assert space.size() == 3 * 1 * 2 * 3  # prune x depth x bits x resolution (defaults)
    sampler = AskTellGridSampler(grid, seed=0)
    study = optuna.create_study(sampler=sampler)
    seen = set()
    for _ in range(space.size()):
        t = study.ask()
        seen.add(space.suggest(t).config_hash())
        study.tell(t, 0.0)
    assert len(seen) == space.size() and sampler.exhausted(study)


def test_continuous_dimension_has_no_size_or_grid() -> None:
    space = _space(prune={"low": 0.0, "high": 0.5})
    assert space.size() is None
    with pytest.raises(ConfigError, match="space.prune"):
        space.grid()
    t = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert 0.0 <= space.suggest(t).prune <= 0.5


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"prune": {"low": 0.0, "high": 1.0}}, "space.prune"),
        ({"resolution": {"choices": [0.05, 1.0]}}, "space.resolution"),
        ({"bits": {"low": 8, "high": 16}}, "space.bits"),
        ({"depth": {"choices": [0.0, 1.0]}}, "space.depth"),
    ],
)
def test_invalid_spec_names_the_key(spec: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _space(**spec)


def test_to_ray_gives_tune_domains_with_the_same_names() -> None:
    from ray.tune.search.sample import Categorical, Float

    space = _space(prune={"low": 0.0, "high": 0.6, "step": 0.2}, per_stage_prune=True)
    ray_space = space.to_ray()
    assert set(ray_space) == set(space.param_names)
    assert isinstance(ray_space["w_bits"], Categorical) and isinstance(ray_space["prune_s0"], Float)
    sample = {k: v.sample() for k, v in ray_space.items()}
    assert isinstance(space.from_params(sample), CompressionConfig)
