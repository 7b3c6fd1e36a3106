"""Experiment config: YAML -> object -> YAML unchanged; bad keys and values are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgecompress.errors import ConfigError
from edgecompress.spaces import CompressionConfig, load_experiment, parse_experiment

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_presets_load_and_round_trip(path: Path) -> None:
    exp = load_experiment(path)
    text = exp.to_yaml()
    again = parse_experiment(yaml.safe_load(text))
    assert again == exp
    assert again.to_yaml() == text


def test_required_presets_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert {"fmnist-quick.yaml", "fmnist.yaml", "cifar10-resnet20.yaml", "imagenet-resnet50.yaml"} <= names


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model:\n  nmae: resnet8\n", r"exp.yaml: model.nmae: unknown key"),
        ("base_training:\n  epochs: many\n", r"exp.yaml: base_training.epochs: .*integer"),
        ("dataset:\n  val_fraction: 1.5\n", r"exp.yaml: dataset.val_fraction: .*less than 0.9"),
        ("budget:\n  sampler: cmaes\n", r"exp.yaml: budget.sampler: "),
        ("space:\n  bits: {choices: [32, 12]}\n", r"exp.yaml: space.bits: .*12"),
        ("space:\n  prune: {low: 0.5, high: 0.1}\n", r"exp.yaml: space.prune: .*low"),
        ("objectives: []\n", r"exp.yaml: objectives: .*at least one"),
        ("- a\n- b\n", r"exp.yaml: expected a mapping"),
        ("model: [unclosed\n", r"exp.yaml: line \d+ invalid YAML"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_experiment(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_experiment("nope.yaml")


def test_overrides_apply_dotted_keys(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path, "name: x\n"), {"base_training.epochs": 2, "dataset.train_subset": 10})
    assert exp.base_training.epochs == 2 and exp.dataset.train_subset == 10


def test_base_key_depends_on_recipe_not_on_search_budget(tmp_path: Path) -> None:
    a = parse_experiment({})
    assert a.base_key() == parse_experiment({"budget": {"trials": 3}}).base_key()
    assert a.base_key() != parse_experiment({"base_training": {"epochs": 3}}).base_key()
    assert a.base_key() != parse_experiment({"seed": 1}).base_key()


def test_compression_config_round_trip_and_hash() -> None:
    c = CompressionConfig(prune=(0.25, 0.5, 0.5), depth=(1, 2, 2), w_bits=8, a_bits=8, resolution=0.75)
    again = CompressionConfig.from_yaml(c.to_yaml())
    assert again == c and again.config_hash() == c.config_hash()
    assert CompressionConfig(prune=0.5).config_hash() != CompressionConfig(prune=0.25).config_hash()
    assert c.stage_prune(3) == [0.25, 0.5, 0.5] and c.input_size(28) == 21


@pytest.mark.parametrize(
    ("data", "expected"),
    [({"prune": 1.0}, "prune"), ({"w_bits": 12}, "w_bits"), ({"resolution": 0}, "resolution"),
     ({"pruning": 0.1}, "pruning: unknown key"), ({"depth": [0, 1]}, "depth")],
)
def test_compression_config_rejects(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        CompressionConfig.from_dict(data, "cfg")
