"""CascadeModel: runs a cascade plan on batches (escalating only uncertain samples), and its directory form.

A saved cascade is a directory: cascade.yaml (format version, input channels, the plan) and one
TorchScript file per stage, written atomically (temp directory + rename) and loaded with one call.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from edgecompress.cascade.planning.confidence import confidence
from edgecompress.cascade.planning.plan import CascadePlan, combine_weight, escalates
from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.splits import resize_batch
from edgecompress.utils import read_format_yaml, replace_dir

FORMAT_NAME = "edgecompress-cascade"
FORMAT_VERSION = 1
SPEC_FILE = "cascade.yaml"


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence torch's "torch.jit is deprecated" FutureWarnings (TorchScript is still our stage format)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
        yield


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of N x C x H x W to size x size, exactly as the data pipeline resizes (antialiased),
    so a stage sees the same pixels it was fine-tuned and validated on; identity when already there."""
    return resize_batch(x, size)


def infer_in_chans(module: nn.Module) -> int:
    """Input channels of a CNN: dim 1 of its first 4-D parameter (the stem convolution)."""
    for p in module.parameters():
        if p.ndim == 4:
            return int(p.shape[1])
    raise ValueError("module has no 4-D (conv) weight to infer a stage's input channels from; pass in_chans")


class CascadeModel(nn.Module):
    """Stage models run in plan order; each sample stops at the first stage confident about it.

    forward(x) takes N x C x H x W at any resolution (each stage gets its own plan size, resized from
    x; a `crop: dic` stage, evaluators.dic.DICPipeline, has the native size there and crops the canvas itself),
    returns N x classes logits combined per the plan. Nothing is moved between devices: stages and
    input must already share one. Gradients are off; put the stages in eval mode (the constructor does).
    """

    def __init__(self, stages: Sequence[nn.Module], plan: CascadePlan, in_chans: int | None = None) -> None:
        super().__init__()
        if len(stages) != len(plan.stages):
            raise ValueError(f"plan has {len(plan.stages)} stages but {len(stages)} modules were given")
        self.stages = nn.ModuleList(stages)
        self.plan = plan
        self.in_chans = int(in_chans) if in_chans is not None else infer_in_chans(self.stages[0])
        self._weight = combine_weight(plan.combine, plan.alpha)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route(x)[0]

    @torch.no_grad()
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits N x classes, exit stage index per sample) for a batch.

        Fast paths (no gather/scatter) when a stage keeps or escalates the whole batch, so batch-1
        routing costs little more than the confidence score.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x must be N x {self.in_chans} x H x W, got shape {tuple(x.shape)}")
        plan, m, n = self.plan, len(self.stages), x.shape[0]
        exit_stage = torch.full((n,), m - 1, dtype=torch.long, device=x.device)
        active: torch.Tensor | None = None  # indices of the samples still routed; None = all of them
        out: torch.Tensor | None = None
        running: torch.Tensor | None = None
        for k, stage in enumerate(self.stages):
            xk = x if active is None else x.index_select(0, active)
            z = stage(resize(xk, plan.stages[k].input_size))
            running = z if (running is None or self._weight is None) else running + self._weight * z
            last = k == m - 1
            if not last:
                conf = confidence(z, plan.kind, plan.temperatures[k])
                escalate = escalates(conf, plan.lows[k], plan.thresholds[k])
                n_escalated = int(escalate.sum())
                if n_escalated == len(escalate):
                    continue  # everybody goes on: nothing to gather
            if last or n_escalated == 0:  # everybody still routed exits here
                if active is None:
                    return running, exit_stage.fill_(k)
                if out is None:
                    out = running.new_empty((n, running.shape[1]))
                out[active] = running.to(out.dtype)
                exit_stage[active] = k
                break
            if active is None:
                active = torch.arange(n, device=x.device)
            if out is None:
                out = running.new_empty((n, running.shape[1]))
            stop = ~escalate
            out[active[stop]] = running[stop].to(out.dtype)
            exit_stage[active[stop]] = k
            active, running = active[escalate], running[escalate]
        assert out is not None
        return out, exit_stage


def save_cascade(model: CascadeModel, directory: str | os.PathLike[str]) -> Path:
    """Write `model` as cascade.yaml + stage_<k>.pt (TorchScript, traced) into `directory`, atomically.

    An existing cascade directory is replaced; any other non-empty directory is left alone (error).
    """
    directory = Path(directory)
    if directory.exists() and (
        not directory.is_dir() or (any(directory.iterdir()) and not (directory / SPEC_FILE).is_file())
    ):
        raise EdgeCompressError(
            f"refusing to overwrite {directory}: it exists and is not a cascade directory"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        files = []
        for k, (stage, sp) in enumerate(zip(model.stages, model.plan.stages, strict=True)):
            fname = f"stage_{k}.pt"
            scripted = (
                stage
                if isinstance(stage, torch.jit.ScriptModule)
                else _trace(stage, model.in_chans, sp.input_size)
            )
            with _quiet_jit():
                torch.jit.save(scripted, str(tmp / fname))
            files.append(fname)
        spec = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "in_chans": model.in_chans,
            "stage_files": files,
            "plan": model.plan.to_dict(),
        }
        (tmp / SPEC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
        replace_dir(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _trace(stage: nn.Module, in_chans: int, size: int) -> torch.jit.ScriptModule:
    """TorchScript trace of one stage in eval mode on its own device (batch size stays dynamic)."""
    p = next(iter(stage.parameters()), None)
    example = torch.zeros(
        2,
        in_chans,
        size,
        size,
        device=p.device if p is not None else "cpu",
        dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32,
    )
    was_training = stage.training
    stage.eval()
    try:
        with torch.no_grad():
            with _quiet_jit():
                return torch.jit.trace(stage, example, check_trace=False)
    finally:
        stage.train(was_training)


def load_cascade(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> CascadeModel:
    """Load a directory written by save_cascade; stages are TorchScript modules on `map_location`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EdgeCompressError(f"cascade directory not found: {directory}")
    spec_path = directory / SPEC_FILE
    if not spec_path.is_file():
        raise EdgeCompressError(f"not a cascade directory (no {SPEC_FILE}): {directory}")
    spec = read_format_yaml(spec_path, FORMAT_NAME, (FORMAT_VERSION,), "cascade spec")
    try:
        plan = CascadePlan.from_dict(spec["plan"])
        files = list(spec["stage_files"])
        in_chans = int(spec["in_chans"])
    except (KeyError, TypeError, ValueError) as e:
        raise EdgeCompressError(f"{spec_path}: invalid cascade spec ({e})") from None
    stages = []
    for fname in files:
        path = directory / fname
        if not path.is_file():
            raise EdgeCompressError(f"cascade stage file missing: {path}")
        try:
            with _quiet_jit():
                stages.append(torch.jit.load(str(path), map_location=map_location))
        except Exception as e:  # noqa: BLE001 - corrupt or foreign file
            raise EdgeCompressError(f"cannot load cascade stage {path}: {e}".splitlines()[0]) from None
    try:
        return CascadeModel(stages, plan, in_chans=in_chans)
    except ValueError as e:
        raise EdgeCompressError(f"{spec_path}: {e}") from None
