"""Every zoo model runs forward at two resolutions (parametrised over the registry)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgecompress.errors import EdgeCompressError, UnknownNameError
from edgecompress.evaluators.models import classifier_layer, create_model, list_models, model_stages

SMALL = {"resnet8", "resnet20", "resnet56"}


@pytest.mark.parametrize("name", list_models())
def test_forward_two_resolutions(name: str) -> None:
    model = create_model(name, num_classes=7, in_chans=1).eval()
    sizes = (28, 32) if name in SMALL else (64, 96)
    with torch.no_grad():
        for s in sizes:
            out = model(torch.randn(2, 1, s, s))
            assert out.shape == (2, 7)
            assert torch.isfinite(out).all()
    assert len(model_stages(model)) >= 1
    assert classifier_layer(model).out_features == 7


def test_unknown_model_lists_valid() -> None:
    with pytest.raises(UnknownNameError, match="unknown model 'resnet9'; valid: .*resnet8"):
        create_model("resnet9")


def test_local_pretrained_weights_round_trip(tmp_path: Path) -> None:
    src = create_model("resnet8", num_classes=10, in_chans=1)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = create_model("resnet8", num_classes=10, in_chans=1, pretrained=path).eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(src.eval()(x), dst(x))


def test_pretrained_mismatch_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(create_model("resnet20", num_classes=10, in_chans=1).state_dict(), path)
    with pytest.raises(EdgeCompressError, match="do not match the model"):
        create_model("resnet8", num_classes=10, in_chans=3, pretrained=path)
    with pytest.raises(EdgeCompressError, match="not found"):
        create_model("resnet8", pretrained=tmp_path / "nope.pt")
