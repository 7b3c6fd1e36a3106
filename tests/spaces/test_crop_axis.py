"""The crop axis: configs without crop keep their hash; the space searches crop as a categorical parameter."""

from __future__ import annotations

import optuna
import pytest

from edgecompress.errors import ConfigError
from edgecompress.spaces.config import CompressionConfig
from edgecompress.spaces.experiment import SpaceConfig, parse_experiment
from edgecompress.spaces.space import SearchSpace

# hashes computed at commit b9248e8, before CompressionConfig gained `crop`
HASHES_BEFORE = {
    "783e90b43849": CompressionConfig(),
    "82a01a4ba933": CompressionConfig(prune=0.5, resolution=0.5, w_bits=8, a_bits=8),
    "aff13ccbce73": CompressionConfig(prune=(0.1, 0.2, 0.3), depth=(1, 1, 1)),
}


def test_configs_without_crop_keep_their_hash() -> None:
    for h, cfg in HASHES_BEFORE.items():
        assert cfg.config_hash() == h
        assert CompressionConfig.from_dict({**cfg.to_dict(), "crop": "none"}).config_hash() == h
        assert "crop" not in cfg.to_dict()
    dic = CompressionConfig(resolution=0.5, crop="dic")
    assert dic.config_hash() != CompressionConfig(resolution=0.5).config_hash()
    assert CompressionConfig.from_yaml(dic.to_yaml()) == dic and not dic.is_uncompressed
    with pytest.raises(ConfigError, match="crop"):
        CompressionConfig.from_dict({"crop": "zoom"})


def test_space_searches_crop_as_a_categorical_parameter() -> None:
    space = SearchSpace(SpaceConfig(prune={"choices": [0.0, 0.5]}, crop={"choices": ["none", "dic"]}), 3, [1, 1, 1])
    assert space.grid()["crop"] == ["none", "dic"] and space.size() == 2 * 2 * 3 * 2
    assert isinstance(space.distributions()["crop"], optuna.distributions.CategoricalDistribution)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        cfg = space.suggest(trial)
        seen.add(cfg.crop)
        assert space.from_params(space.params_of(cfg)) == cfg
        study.tell(trial, 0.0)
    assert seen == {"none", "dic"}
    assert space.uncompressed().crop == "none"
    plain = SearchSpace(SpaceConfig(), 3, [1, 1, 1])
    assert "crop" not in plain.param_names and plain.suggest(optuna.create_study().ask()).crop == "none"
    with pytest.raises(ConfigError, match="space does not search crop"):
        plain.params_of(CompressionConfig(crop="dic"))


def test_bad_crop_choice_is_one_line_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"space\.crop"):
        parse_experiment({"space": {"crop": {"choices": ["none", "zoom"]}}}, "exp.yaml")
    with pytest.raises(ConfigError, match=r"space\.crop"):
        parse_experiment({"space": {"crop": {"choices": ["none"], "low": 0}}}, "exp.yaml")
