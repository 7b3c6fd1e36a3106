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


class FaultyEvaluator:
    """The real evaluator, except that configs matching `crash_on` die of SIGSEGV and configs matching
    `hang_on` sleep forever: the native failures a trial worker must survive (used in tests, in a child)."""

    def __init__(self, exp: object, crash_on: dict | None = None, hang_on: dict | None = None) -> None:
        from edgecompress.evaluators.evaluate import build_evaluator

        self.inner = build_evaluator(exp)
        self.crash_on, self.hang_on = crash_on, hang_on

    def prepare(self, on_progress=None) -> None:  # noqa: ANN001
        self.inner.prepare(on_progress)

    @staticmethod
    def _matches(config: object, spec: dict | None) -> bool:
        return spec is not None and all(getattr(config, k) == v for k, v in spec.items())

    def __call__(self, config, artefact_dir=None, on_epoch=None):  # noqa: ANN001, ANN204
        import os
        import signal
        import time

        if self._matches(config, self.crash_on):
            os.kill(os.getpid(), signal.SIGSEGV)
        if self._matches(config, self.hang_on):
            while True:
                time.sleep(1)
        return self.inner(config, artefact_dir, on_epoch)


def faulty_evaluator(exp: object, crash_on: dict | None = None, hang_on: dict | None = None) -> FaultyEvaluator:
    """Picklable factory for IsolatedEvaluator (functools.partial of this)."""
    return FaultyEvaluator(exp, crash_on, hang_on)
