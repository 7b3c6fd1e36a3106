"""Helpers shared by the test suite (as optuna.testing): small zoo models ready for compression tests."""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.evaluators.models import CifarResNet, create_model


def tiny_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """Zoo model + tiny input: 1-channel 16 px for CIFAR ResNets, 3-channel 32 px for the others.

    BatchNorm statistics are set from random data first, as after training: with the init statistics
    (mean 0, var 1) a deep untrained net's signal vanishes and its output is the classifier bias.
    """
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=3)
    x = torch.randn(2, 3, 32, 32)
    if isinstance(model, CifarResNet):
        model = create_model(name, num_classes=10, in_chans=1)
        x = torch.randn(2, 1, 16, 16)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the warm-up batches
    with torch.no_grad():
        model.train()
        model(torch.randn(4, *x.shape[1:]))
    return model.eval(), x
