"""BatchNorm re-estimation: after pruning, quantising or changing the input resolution, the running mean and
variance the base model learnt no longer match the features; re-estimating them on a few hundred training
images (no gradient, seconds) restores much of the accuracy and makes a short fine-tune rank configs better
(AMC, EagleEye). Done before every candidate's fine-tune (finetune.bn_recalibration_images)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], device: str = "cpu") -> int:
    """Reset and re-estimate every BatchNorm's running statistics as the plain average over `batches`
    (forward passes in train mode, no gradient); returns the number of images used (0: no BatchNorm)."""
    bns = [m for m in model.modules() if isinstance(m, BATCHNORMS) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    was_training = model.training
    seen = 0
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average = the mean over all batches
        model.train()
        with torch.no_grad():
            for x in batches:
                model(x.to(device))
                seen += int(x.shape[0])
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.train(was_training)
    return seen
