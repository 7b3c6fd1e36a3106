"""Axes a model cannot take are refused in one line when the search space is built (study_setup.space_for),
instead of being silently ignored; and the structure is stored with the study."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgecompress.errors import ConfigError, ModelError
from edgecompress.search.study_setup import space_for
from edgecompress.spaces import parse_experiment


def _exp(model: dict, space: dict, resolution: int | None = None) -> object:
    return parse_experiment({"dataset": {"name": "fashion_mnist", "resolution": resolution}, "model": model,
                             "space": {"prune": {"choices": [0.0, 0.5]}, **space}})


def test_depth_is_refused_without_a_residual_block() -> None:
    with pytest.raises(ConfigError, match=r"space.depth \[0.5, 1.0\]: the model has no residual block with an "
                                          r"identity shortcut to drop"):
        space_for(_exp({"name": "edgecompress.testing:plain_net"}, {"depth": {"choices": [0.5, 1.0]}}))
    space_for(_exp({"name": "edgecompress.testing:plain_net"}, {"depth": {"choices": [1.0]}}))  # not searched: fine


def test_resolution_is_refused_when_a_spatial_map_is_flattened() -> None:
    with pytest.raises(ConfigError, match="flattens a spatial map without global pooling"):
        space_for(_exp({"name": "edgecompress.testing:flat_net"}, {"resolution": {"choices": [0.5, 1.0]}}))
    space_for(_exp({"name": "edgecompress.testing:flat_net"}, {"resolution": {"choices": [1.0]}}))


def test_resolution_below_the_smallest_input_side_is_refused() -> None:
    """DenseNet-121's pooling chain needs 29 px: at 32 px native, 0.75 x 32 = 24 px is refused, naming both sides;
    at Fashion-MNIST's own 28 px the model does not run at all, which is one line too."""
    with pytest.raises(ConfigError, match=r"space.resolution 0.75 gives 24 px, below the model's smallest input "
                                          r"side 29 px \(native 32 px\)"):
        space_for(_exp({"name": "torchvision:densenet121"}, {"resolution": {"choices": [0.75, 1.0]}}, 32))
    with pytest.raises(ModelError, match=r"torchvision:densenet121: forward on a \(2, 1, 28, 28\) input failed"):
        space_for(_exp({"name": "torchvision:densenet121"}, {"resolution": {"choices": [1.0]}}))


def test_crop_is_refused_without_a_map_for_cam_boxes() -> None:
    with pytest.raises(ConfigError, match=r"space.crop \['none', 'dic'\]: no global pooling after a feature map"):
        space_for(_exp({"name": "edgecompress.testing:flat_net"},
                       {"resolution": {"choices": [1.0]}, "crop": {"choices": ["none", "dic"]}}))


def test_unset_new_model_fields_keep_the_hash_and_set_ones_change_it() -> None:
    a = _exp({"name": "resnet8"}, {})
    b = _exp({"name": "resnet8", "ignored_layers": ["fc"]}, {})
    assert a.base_key() != b.base_key() and "stages" not in a.model.hashed()


def test_overrides_name_stages_and_kept_out_layers() -> None:
    from edgecompress.evaluators.models import create_model
    from edgecompress.evaluators.structure import attach_structure

    model = create_model("edgecompress.testing:odd_net", num_classes=10, in_chans=1, input_size=28)
    found = attach_structure(model, 1, 28, stages=["trunk", "tail"], ignored_layers=["split_a.0"])
    assert [s.name for s in found.stages] == ["trunk", "tail"] and found.source == "override"
    assert found.kept_out["split_a.0"] == "model.ignored_layers"
    assert "split_a.0" not in {n for s in found.stages for n in s.layers}
    with pytest.raises(Exception, match="model.stages: no module 'nowhere'"):
        attach_structure(model, 1, 28, stages=["nowhere"])


def test_pretrained_comes_from_a_local_state_dict(tmp_path: Path) -> None:
    from edgecompress.evaluators.models import create_model

    src = create_model("torchvision:resnet18", num_classes=10, in_chans=3, input_size=32)
    torch.save(src.state_dict(), tmp_path / "r18.pt")
    got = create_model("torchvision:resnet18", num_classes=10, in_chans=3, input_size=32,
                       pretrained=tmp_path / "r18.pt")
    assert torch.equal(got.layer3[0].conv1.weight, src.layer3[0].conv1.weight)
