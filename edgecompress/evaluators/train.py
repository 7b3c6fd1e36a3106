"""Training loops: base-model training and fine-tuning with distillation, both with an LR schedule.

Loss that turns NaN/inf raises TrainingDivergedError (the search records the trial as failed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.errors import TrainingDivergedError, TrialTimeoutError
from edgecompress.evaluators.memformat import (
    MemoryFormatChoice,
    cached_memory_format,
    choose_memory_format,
    in_format,
    worth_probing,
)
from edgecompress.evaluators.splits import Split, make_loader
from edgecompress.runtime.compute_lock import step_lock
from edgecompress.runtime.timing import Stopwatch

EpochCallback = Callable[[int, float], None]


@dataclass
class TrainProgress:
    """Where a training run stands, given to `train_model`'s `on_progress` after every step. At the end of
    an epoch `epoch_end` is True and `loss` / `train_accuracy` are that epoch's means over its (augmented)
    training batches, free to compute (no extra pass over a validation split)."""

    step: int  # steps done so far, over all epochs
    total_steps: int
    epoch: int  # 1-based epoch the step belongs to
    epochs: int
    elapsed_s: float
    epoch_end: bool = False
    loss: float | None = None
    train_accuracy: float | None = None

    def line(self, what: str = "training") -> str:
        """One plain log line for an epoch's end, e.g. 'training: epoch 3/8 loss 0.412 train acc 0.853 (41 s)'."""
        text = f"{what}: epoch {self.epoch}/{self.epochs}"
        if self.loss is not None:
            text += f" loss {self.loss:.4f}"
        if self.train_accuracy is not None:
            text += f" train acc {self.train_accuracy:.4f}"
        return text + f" ({self.elapsed_s:.0f} s elapsed)"


ProgressCallback = Callable[[TrainProgress], None]


@dataclass
class TrainSettings:
    """What one training run needs (built from TrainRecipe or FinetuneRecipe)."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    augment: bool = True
    limit: int | None = None  # images per epoch
    distill_weight: float = 0.0
    temperature: float = 4.0
    seed: int = 0
    memory_format: str = "auto"  # auto (probed per model shape, see memformat.py), contiguous, channels_last
    max_seconds: float | None = None  # wall-clock budget from the start of training (TrialTimeoutError)
    compute_lock: bool = True  # each step holds the machine's compute lock shared (runtime/compute_lock.py)

    @classmethod
    def from_recipe(cls, recipe: Any, seed: int = 0) -> TrainSettings:
        fields = {k: getattr(recipe, k) for k in cls.__dataclass_fields__ if hasattr(recipe, k)}
        if hasattr(recipe, "train_subset"):
            fields["limit"] = recipe.train_subset
        fields["seed"] = seed
        return cls(**fields)


@dataclass
class TrainHistory:
    losses: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)  # per epoch, on the (augmented) training batches
    val_accuracy: list[float] = field(default_factory=list)
    steps: int = 0
    memory_format: str = "contiguous"
    memory_format_reason: str = ""


def _scheduler(opt: torch.optim.Optimizer, s: TrainSettings, total_steps: int) -> Any:
    if s.schedule == "onecycle" and total_steps >= 10:  # one-cycle needs a few steps per phase
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=max(1, total_steps),
                                                   pct_start=0.25, div_factor=10.0, final_div_factor=100.0)
    if s.schedule in ("cosine", "onecycle"):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton distillation term, scaled by T^2 so its gradient size does not depend on T."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t


def train_model(
    model: nn.Module,
    train: Split,
    size: int,
    settings: TrainSettings,
    val: Split | None = None,
    teacher: nn.Module | None = None,
    teacher_size: int | None = None,
    on_epoch: EpochCallback | None = None,
    on_step: Callable[[int, int], None] | None = None,
    device: str = "cpu",
    on_progress: ProgressCallback | None = None,
) -> TrainHistory:
    """SGD (nesterov) with the schedule in `settings`; KD from `teacher` when distill_weight > 0.
    `on_step(done, total)` and `on_progress(TrainProgress)` are called after every step, `on_progress`
    once more at each epoch's end with its loss and training accuracy; `on_epoch(epoch, val_accuracy)`
    after each epoch when `val` is given.

    Each step (forward, backward, optimiser) holds the machine's compute lock shared, so a latency
    measurement in any process waits for at most one step and no step runs while it measures.
    """
    lock = step_lock(settings.compute_lock)
    depth = lock.depth()
    try:
        return _train_loop(model, train, size, settings, val, teacher, teacher_size, on_epoch, on_step, device, lock,
                           on_progress)
    finally:
        lock.release_thread(depth)  # a step that raised (divergence, out of memory) must not keep the lock


def _train_loop(model: nn.Module, train: Split, size: int, settings: TrainSettings, val: Split | None,
                teacher: nn.Module | None, teacher_size: int | None, on_epoch: EpochCallback | None,
                on_step: Callable[[int, int], None] | None, device: str, lock: Any,
                on_progress: ProgressCallback | None) -> TrainHistory:
    torch.manual_seed(settings.seed)
    loader = make_loader(train, size, settings.batch_size, shuffle=True, augment=settings.augment,
                         seed=settings.seed, limit=settings.limit)
    steps_per_epoch = len(loader)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay, nesterov=settings.momentum > 0)
    sched = _scheduler(opt, settings, settings.epochs * steps_per_epoch)
    # channels-last only where a probe in a child process showed it safe and faster (its backward crashes
    # or hangs on AVX2-only CPUs for small pruned layers); undecided runs start contiguous and probe after
    # a few steps if the run is long enough to repay the probe. Undone at the end.
    threads = torch.get_num_threads()
    in_shape: tuple[int, ...] = ()
    choice: MemoryFormatChoice | None = None
    fmt = torch.contiguous_format
    warm_times: list[float] = []
    started = time.monotonic()
    use_kd = teacher is not None and settings.distill_weight > 0
    if use_kd:
        teacher.eval()
    hist = TrainHistory()
    for epoch in range(settings.epochs):
        model.train()
        total, count, correct = 0.0, 0, 0
        for step, (x, y) in enumerate(loader):
            step_watch = Stopwatch()  # the first steps' time chooses the memory format (memformat.py)
            x, y = x.to(device), y.to(device)
            if not in_shape:  # the first batch: a forced or cached choice applies from the start
                in_shape = tuple(x.shape)
                choice = cached_memory_format(model, in_shape, threads, str(device), settings.memory_format)
                fmt = choice.torch_format if choice is not None else torch.contiguous_format
                model.to(memory_format=fmt)
            if settings.max_seconds is not None and time.monotonic() - started > settings.max_seconds:
                raise TrialTimeoutError(f"training exceeded max_seconds={settings.max_seconds:g} "
                                        f"at epoch {epoch + 1}, step {step + 1}")
            lock.acquire_shared()  # released after the optimiser step; train_model releases it on errors
            out = model(in_format(x, fmt))
            loss = F.cross_entropy(out, y, label_smoothing=settings.label_smoothing)
            if use_kd:
                with torch.no_grad():
                    xt = x if teacher_size in (None, size) else F.interpolate(
                        x, size=(teacher_size, teacher_size), mode="bilinear", align_corners=False)
                    t_out = teacher(xt)
                w = settings.distill_weight
                loss = (1 - w) * loss + w * kd_loss(out, t_out, settings.temperature)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingDivergedError(f"loss became {loss_value} at epoch {epoch + 1}, step {step + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            lock.release_shared()
            total += loss_value * len(y)
            count += len(y)
            correct += int((out.detach().argmax(1) == y).sum())
            hist.steps += 1
            if choice is None and len(y) == in_shape[0]:
                warm_times.append(step_watch.seconds())
                if len(warm_times) == 4:  # the first step allocates and picks kernels
                    choice = _decide_format(model, in_shape, threads, str(device), sorted(warm_times[1:])[1],
                                            settings.epochs * steps_per_epoch - hist.steps)
                    fmt = choice.torch_format
                    model.to(memory_format=fmt)
            if on_step is not None:
                on_step(epoch * steps_per_epoch + step + 1, settings.epochs * steps_per_epoch)
            if on_progress is not None:
                on_progress(TrainProgress(epoch * steps_per_epoch + step + 1, settings.epochs * steps_per_epoch,
                                          epoch + 1, settings.epochs, time.monotonic() - started))
        hist.losses.append(total / max(1, count))
        hist.train_accuracy.append(correct / max(1, count))
        if on_progress is not None:
            on_progress(TrainProgress((epoch + 1) * steps_per_epoch, settings.epochs * steps_per_epoch, epoch + 1,
                                      settings.epochs, time.monotonic() - started, epoch_end=True,
                                      loss=hist.losses[-1], train_accuracy=hist.train_accuracy[-1]))
        if val is not None:
            acc = accuracy(model, val, size, device=device, compute_lock=settings.compute_lock)
            hist.val_accuracy.append(acc)
            if on_epoch is not None:
                on_epoch(epoch + 1, acc)
    if choice is None:
        choice = MemoryFormatChoice("contiguous", "run too short to probe channels-last")
    hist.memory_format, hist.memory_format_reason = choice.format, choice.reason
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return hist


def _decide_format(model: nn.Module, in_shape: tuple[int, ...], threads: int, device: str, step_s: float,
                   remaining_steps: int) -> MemoryFormatChoice:
    """Probe channels-last (in a child process) when the rest of the run can repay the probe."""
    if worth_probing(step_s, remaining_steps):
        return choose_memory_format(model, in_shape, threads, device)
    return MemoryFormatChoice("contiguous", f"not probed: {remaining_steps} steps of {step_s * 1e3:.0f} ms "
                              "left would not repay a channels-last probe")


@torch.no_grad()
def predict_logits(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], split: Split, size: int,
                   batch_size: int = 512, device: str = "cpu", compute_lock: bool = True) -> np.ndarray:
    """Logits for every sample of `split` in order (float32, N x classes); each batch holds the compute
    lock shared (as a training step does) unless `compute_lock` is False."""
    if isinstance(model, nn.Module):
        model.eval()
    outs = []
    lock = step_lock(compute_lock)
    for x, _ in make_loader(split, size, batch_size):
        with lock.shared():
            outs.append(model(x.to(device)).float().cpu())
    return torch.cat(outs).numpy()


def accuracy(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], split: Split, size: int,
             batch_size: int = 512, device: str = "cpu", compute_lock: bool = True) -> float:
    logits = predict_logits(model, split, size, batch_size, device, compute_lock)
    return float((logits.argmax(1) == split.labels.numpy()).mean())
