"""CascadeModel on real Fashion-MNIST images: batched routing equals a per-sample loop; save/load."""

from __future__ import annotations

import copy
import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from edgecompress.cascade import (
    CascadeModel,
    CascadePlan,
    StagePlan,
    StageSpec,
    confidence,
    load_cascade,
    save_cascade,
    seed_rule_plan,
    simulate,
)
from edgecompress.cascade.serving.cascade_model import resize
from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.models import create_model

N_IMAGES = 256


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Per-sample loops of tiny models: one intra-op thread is ~50x faster on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images(fmnist_dir: Path) -> tuple[torch.Tensor, np.ndarray]:
    """The first test images of Fashion-MNIST (where the loader finds them), normalised, 1 x 28 x 28."""
    img_path, lab_path = fmnist_dir / "t10k-images-idx3-ubyte.gz", fmnist_dir / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(img_path, "rb") as f:
        raw = f.read(16 + N_IMAGES * 784)
    with gzip.open(lab_path, "rb") as f:
        labels = np.frombuffer(f.read(8 + N_IMAGES), dtype=np.uint8)[8:].astype(np.int64)
    x = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8)[16:].copy()).float().view(N_IMAGES, 1, 28, 28)
    return (x / 255 - 0.286) / 0.353, labels


@pytest.fixture(scope="module")
def stages() -> list[nn.Module]:
    """Three small real CNNs (random init, eval mode): narrow/wide ResNet-8 and ResNet-20."""
    torch.manual_seed(0)
    mods = [
        create_model("resnet8", num_classes=10, in_chans=1, widths=(8, 16, 32)),
        create_model("resnet8", num_classes=10, in_chans=1),
        create_model("resnet20", num_classes=10, in_chans=1, widths=(8, 16, 32)),
    ]
    for m in mods:
        for bn in m.modules():  # non-trivial BN statistics so the stages disagree in interesting ways
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
    return [m.eval() for m in mods]


SIZES = [14, 20, 28]


def _stage_logits(stages: list[nn.Module], x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [s(resize(x, size)).numpy() for s, size in zip(stages, SIZES, strict=False)]


def _safe_threshold(conf: np.ndarray, lo: float = 0.3, hi: float = 0.7) -> float:
    """A threshold in the widest gap between confidences in the given quantile range (robust to 1e-6)."""
    c = np.sort(conf)
    a, b = int(lo * len(c)), int(hi * len(c))
    gaps = np.diff(c[a:b])
    i = a + int(np.argmax(gaps))
    return float((c[i] + c[i + 1]) / 2)


def _plan(stages: list[nn.Module], x: torch.Tensor, m: int, kind: str, combine: str) -> CascadePlan:
    logits = _stage_logits(stages, x)
    temps = [1.0, 1.5, 1.0][:m]
    thr = [
        _safe_threshold(confidence(z, kind, t), *q)
        for z, t, q in zip(logits[: m - 1], temps, [(0.3, 0.7), (0.2, 0.6)], strict=False)
    ]
    return CascadePlan(
        [StagePlan(f"s{k}", SIZES[k], 1.0 + k) for k in range(m)],
        thr,
        kind=kind,
        temperatures=temps,
        combine=combine,
    )


def _reference(stages: list[nn.Module], plan: CascadePlan, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Route each sample alone, by hand, following the plan's rule."""
    outs, exits = [], []
    with torch.no_grad():
        for i in range(x.shape[0]):
            xi, running = x[i : i + 1], None
            for k, sp in enumerate(plan.stages):
                z = stages[k](resize(xi, sp.input_size))
                if running is None or plan.combine == "last":
                    running = z
                else:
                    running = running + (plan.alpha if plan.combine == "seed_alpha" else 1.0) * z
                if k == len(plan.stages) - 1:
                    break
                c = float(confidence(z, plan.kind, plan.temperatures[k])[0])
                if not (plan.lows[k] < c < plan.thresholds[k]):
                    break
            outs.append(running[0])
            exits.append(k)
    return torch.stack(outs), exits


@pytest.mark.parametrize(
    ("m", "kind", "combine"), [(2, "margin", "last"), (3, "max_softmax", "sum"), (3, "entropy", "seed_alpha")]
)
def test_batched_routing_equals_per_sample_loop(images, stages, m: int, kind: str, combine: str) -> None:
    x, labels = images
    plan = _plan(stages, x, m, kind, combine)
    model = CascadeModel(stages[:m], plan)
    out, exit_stage = model.route(x)
    ref, ref_exits = _reference(stages, plan, x)
    assert exit_stage.tolist() == ref_exits
    assert len(set(ref_exits)) == m  # every stage is the exit of some samples
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert not out.requires_grad
    # the plan semantics used by the builder (simulate on per-stage logits) agree with the runtime
    sim = simulate(plan, _stage_logits(stages, x)[:m], labels)
    np.testing.assert_array_equal(sim.exit_stage, exit_stage.numpy())
    np.testing.assert_array_equal(sim.predictions, out.argmax(1).numpy())


def test_seed_rule_outputs_out1_plus_alpha_out2(images, stages) -> None:
    x, labels = images
    z1, z2 = (torch.from_numpy(z) for z in _stage_logits(stages, x)[:2])
    margin = confidence(z1, "margin")
    thr = _safe_threshold(margin.numpy(), 0.2, 0.5)
    small = StageSpec("small", 1.0, 14, z1.numpy())
    large = StageSpec("large", 3.0, 20, z2.numpy())
    model = CascadeModel(stages[:2], seed_rule_plan(small, large, threshold=thr, labels=labels))
    out, exit_stage = model.route(x)
    esc = (margin > 0) & (margin < thr)
    assert 0 < int(esc.sum()) < len(x)
    assert exit_stage.bool().tolist() == esc.tolist()
    torch.testing.assert_close(out[esc], z1[esc] + 1.6 * z2[esc], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[~esc], z1[~esc], atol=1e-5, rtol=1e-5)


def test_any_input_resolution_and_extreme_thresholds(images, stages) -> None:
    x, _ = images
    x32 = torch.nn.functional.interpolate(x[:16], size=(32, 32), mode="bilinear", align_corners=False)
    nobody = CascadeModel(stages[:2], CascadePlan([StagePlan("a", 14, 1), StagePlan("b", 20, 2)], [-np.inf]))
    everybody = CascadeModel(
        stages[:2], CascadePlan([StagePlan("a", 14, 1), StagePlan("b", 20, 2)], [np.inf])
    )
    with torch.no_grad():
        torch.testing.assert_close(nobody(x32), stages[0](resize(x32, 14)))
        torch.testing.assert_close(everybody(x32), stages[1](resize(x32, 20)))
    with pytest.raises(ValueError, match="N x 1 x H x W"):
        nobody(torch.zeros(2, 3, 28, 28))


def test_save_load_gives_identical_outputs(images, stages, tmp_path: Path) -> None:
    x, _ = images
    plan = _plan(stages, x, 3, "margin", "seed_alpha")
    model = CascadeModel(stages, plan)
    target = tmp_path / "out" / "cascade"
    save_cascade(model, target)
    assert sorted(p.name for p in target.iterdir()) == [
        "cascade.yaml",
        "stage_0.pt",
        "stage_1.pt",
        "stage_2.pt",
    ]
    assert yaml.safe_load((target / "cascade.yaml").read_text())["format_version"] == 1
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    loaded = load_cascade(target)
    assert loaded.plan == plan
    a, ea = model.route(x)
    b, eb = loaded.route(x)
    assert torch.equal(ea, eb)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    save_cascade(loaded, target)  # re-saving a loaded (TorchScript) cascade replaces the directory
    torch.testing.assert_close(load_cascade(target)(x), b, atol=0, rtol=0)


def test_load_errors_name_the_path(images, stages, tmp_path: Path) -> None:
    x, _ = images
    with pytest.raises(EdgeCompressError, match="cascade directory not found: .*nowhere"):
        load_cascade(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeCompressError, match="no cascade.yaml.*empty"):
        load_cascade(tmp_path / "empty")
    target = tmp_path / "c"
    save_cascade(CascadeModel(stages[:2], _plan(stages, x, 2, "margin", "last")), target)
    spec = yaml.safe_load((target / "cascade.yaml").read_text())
    (target / "stage_1.pt").unlink()
    with pytest.raises(EdgeCompressError, match="stage file missing: .*stage_1.pt"):
        load_cascade(target)
    (target / "cascade.yaml").write_text(yaml.safe_dump({**spec, "format_version": 99}))
    with pytest.raises(EdgeCompressError, match=r"cascade.yaml: cascade spec format version 99 is not one"):
        load_cascade(target)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(EdgeCompressError, match="refusing to overwrite"):
        save_cascade(CascadeModel(stages[:2], _plan(stages, x, 2, "margin", "last")), other)
    assert (other / "keep.txt").read_text() == "mine"


@pytest.mark.needs("cuda")
def test_runs_on_the_inputs_device(images, stages) -> None:
    x, _ = images
    plan = _plan(stages, x, 3, "margin", "sum")
    cpu_out, cpu_exit = CascadeModel(stages, plan).route(x)
    gpu = CascadeModel([copy.deepcopy(s).cuda() for s in stages], plan)
    out, exit_stage = gpu.route(x.cuda())
    assert out.device.type == "cuda"
    assert (exit_stage.cpu() == cpu_exit).float().mean() > 0.99
    torch.testing.assert_close(
        out.cpu()[exit_stage.cpu() == cpu_exit], cpu_out[exit_stage.cpu() == cpu_exit], atol=1e-3, rtol=1e-3
    )
