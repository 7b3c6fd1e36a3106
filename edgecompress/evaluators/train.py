"""Training loops: base-model training and fine-tuning with distillation, both with an LR schedule.

Loss that turns NaN/inf raises TrainingDivergedError (the search records the trial as failed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.errors import TrainingDivergedError
from edgecompress.evaluators.data import Split, make_loader

EpochCallback = Callable[[int, float], None]


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
    val_accuracy: list[float] = field(default_factory=list)
    steps: int = 0


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
) -> TrainHistory:
    """SGD (nesterov) with the schedule in `settings`; KD from `teacher` when distill_weight > 0."""
    torch.manual_seed(settings.seed)
    loader = make_loader(train, size, settings.batch_size, shuffle=True, augment=settings.augment,
                         seed=settings.seed, limit=settings.limit)
    steps_per_epoch = len(loader)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay, nesterov=settings.momentum > 0)
    sched = _scheduler(opt, settings, settings.epochs * steps_per_epoch)
    # channels-last is ~1.6x faster for conv training on CPU here (and on CUDA with AMP); undone at the end
    model.to(memory_format=torch.channels_last)
    use_kd = teacher is not None and settings.distill_weight > 0
    if use_kd:
        teacher.eval()
    hist = TrainHistory()
    for epoch in range(settings.epochs):
        model.train()
        total, count = 0.0, 0
        for step, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)
            out = model(x.contiguous(memory_format=torch.channels_last))
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
            total += loss_value * len(y)
            count += len(y)
            hist.steps += 1
            if on_step is not None:
                on_step(epoch * steps_per_epoch + step + 1, settings.epochs * steps_per_epoch)
        hist.losses.append(total / max(1, count))
        if val is not None:
            acc = accuracy(model, val, size, device=device)
            hist.val_accuracy.append(acc)
            if on_epoch is not None:
                on_epoch(epoch + 1, acc)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return hist


@torch.no_grad()
def predict_logits(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], split: Split, size: int,
                   batch_size: int = 512, device: str = "cpu") -> np.ndarray:
    """Logits for every sample of `split` in order (float32, N x classes)."""
    if isinstance(model, nn.Module):
        model.eval()
    outs = []
    for x, _ in make_loader(split, size, batch_size):
        outs.append(model(x.to(device)).float().cpu())
    return torch.cat(outs).numpy()


def accuracy(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], split: Split, size: int,
             batch_size: int = 512, device: str = "cpu") -> float:
    logits = predict_logits(model, split, size, batch_size, device)
    return float((logits.argmax(1) == split.labels.numpy()).mean())
