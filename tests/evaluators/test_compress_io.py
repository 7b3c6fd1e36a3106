"""Saving compressed models: a pruned, depth-reduced (and fake-quantised) model loads in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.compress import (
    apply_fake_quant,
    calibrate,
    compress_model,
    load_compressed,
    save_compressed,
    stage_blocks,
)
from edgecompress.evaluators.models import list_models
from edgecompress.spaces.config import CompressionConfig
from edgecompress.testing import tiny_model

REPO = Path(__file__).resolve().parents[2]


LOADER = textwrap.dedent(
    """
    import json, sys, torch
    from edgecompress.evaluators.compress import load_compressed
    folder = sys.argv[1]
    names = json.loads(sys.argv[2])
    outputs = {}
    for name in names:
        model, meta = load_compressed(f"{folder}/{name}.pt")
        x = torch.load(f"{folder}/{name}.x.pt", weights_only=True)
        with torch.no_grad():
            outputs[name] = model(x)
        outputs[name + ".meta"] = torch.tensor(meta["macs_after"])
    torch.save(outputs, f"{folder}/outputs.pt")
    """
)


@pytest.fixture(scope="module")
def fresh_process_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.Tensor, ...]]:
    """Compress every zoo model, save it, load all of them in ONE fresh interpreter (weights_only)."""
    folder = tmp_path_factory.mktemp("compressed")
    expected: dict[str, tuple[torch.Tensor, int]] = {}
    for name in list_models():
        base, x = tiny_model(name)
        model, report = compress_model(base, CompressionConfig(prune=0.5, depth=0.5, round_to=4), x)
        model.eval()
        with torch.no_grad():
            expected[name] = (model(x), report["macs_after"])
        save_compressed(model, folder / f"{name}.pt", {"macs_after": report["macs_after"]})
        torch.save(x, folder / f"{name}.x.pt")
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(folder), json.dumps(list_models())],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = torch.load(folder / "outputs.pt", weights_only=True)
    return {n: (ref, macs, loaded[n], int(loaded[n + ".meta"])) for n, (ref, macs) in expected.items()}


@pytest.mark.parametrize("name", list_models())
def test_pruned_model_loads_in_a_fresh_process(name: str, fresh_process_outputs: dict) -> None:
    ref, macs, out, meta_macs = fresh_process_outputs[name]
    assert out.shape == ref.shape == (2, 10)
    assert ref.abs().max() > 0
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert meta_macs == macs


def test_fake_quantised_model_round_trips(tmp_path: Path) -> None:
    base, x = tiny_model("resnet20")
    model, _ = compress_model(base, CompressionConfig(prune=0.25, depth=(2, 3, 1)), x)
    model.eval()
    apply_fake_quant(model, 4, 6)
    calibrate(model, [x])
    with torch.no_grad():
        ref = model(x)
    path = save_compressed(model, tmp_path / "q.pt", {"w_bits": 4})
    loaded, meta = load_compressed(path)
    assert meta == {"w_bits": 4}
    assert loaded.ec_fake_quant == {"w_bits": 4, "a_bits": 6, "qat": False}
    assert stage_blocks(loaded) == [2, 3, 1]
    with torch.no_grad():
        assert torch.allclose(loaded(x), ref, atol=1e-6)


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(EdgeCompressError, match="nope.pt"):
        load_compressed(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(EdgeCompressError, match="garbage.pt"):
        load_compressed(garbage)
    base, _ = tiny_model("resnet8")
    good = save_compressed(base, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(EdgeCompressError, match="truncated.pt"):
        load_compressed(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(EdgeCompressError, match="other.pt.*not an edgecompress"):
        load_compressed(other)


def test_save_is_atomic_and_overwrites(tmp_path: Path) -> None:
    base, x = tiny_model("resnet8")
    path = tmp_path / "sub" / "m.pt"
    save_compressed(base, path, {"v": 1})
    save_compressed(base, path, {"v": 2})
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temp files left
    assert load_compressed(path)[1] == {"v": 2}


def test_unsaveable_inputs_are_refused(tmp_path: Path) -> None:
    base, _ = tiny_model("resnet8")
    with pytest.raises(EdgeCompressError, match="JSON"):
        save_compressed(base, tmp_path / "m.pt", {"x": object()})
    del base.zoo_name
    with pytest.raises(EdgeCompressError, match="model has no reference"):
        save_compressed(base, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()
