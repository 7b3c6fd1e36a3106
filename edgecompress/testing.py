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


# ---- a user's own network, as the bring-your-own-model tests and examples name it (edgecompress.testing:OddNet) --
class _Unit(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _Skip(nn.Module):
    """x + f(x): a residual block with an identity shortcut (depth may drop it)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.f = nn.Sequential(_Unit(ch, ch), nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.f(x))


class OddNet(nn.Module):
    """No conventional names (`trunk`, `split_a`/`split_b`, `tail`, `out`), a concatenation branch, two
    residual blocks and a linear head: what a user's own network looks like to edgecompress."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.trunk = nn.Sequential(_Unit(in_chans, w), _Skip(w))
        self.split_a = _Unit(w, w, stride=2)
        self.split_b = nn.Sequential(nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), _Unit(w, w, 2))
        self.tail = nn.Sequential(_Skip(2 * w), _Unit(2 * w, 4 * w, stride=2))
        self.out = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(x)
        x = torch.cat([self.split_a(x), self.split_b(x)], dim=1)
        x = self.tail(x)
        return self.out(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def odd_net(num_classes: int = 10, in_chans: int = 1, width: int = 16) -> OddNet:
    return OddNet(num_classes, in_chans, width)


class PlainNet(nn.Module):
    """Conv stack, global pooling, linear head: no residual block, so depth has nothing to drop."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, flatten: bool = False, side: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(_Unit(in_chans, 8), _Unit(8, 16, 2))
        self.flatten = flatten
        self.head = nn.Linear(16 * ((side + 1) // 2) ** 2 if flatten else 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(x.flatten(1) if self.flatten else x.mean((2, 3)))


def plain_net(num_classes: int = 10, in_chans: int = 1) -> PlainNet:
    return PlainNet(num_classes, in_chans)


def flat_net(num_classes: int = 10, in_chans: int = 1, side: int = 28) -> PlainNet:
    """Flattens its last feature map into the classifier (VGG-style without adaptive pooling): fixed input size."""
    return PlainNet(num_classes, in_chans, flatten=True, side=side)


class FaultyEvaluator:
    """The real evaluator, except that configs matching `crash_on` die of SIGSEGV and configs matching
    `hang_on` sleep forever: the native failures a trial worker must survive (used in tests, in a child)."""

    def __init__(self, exp: object, crash_on: dict | None = None, hang_on: dict | None = None) -> None:
        from edgecompress.evaluators.evaluator import build_evaluator

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


# ---- a busy neighbour worker (latency-exclusion tests and bench/latency.py) ---------------------------
def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc/<pid>/stat; all its threads)."""
    import os

    text = open(f"/proc/{pid}/stat").read()
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; utime, stime are fields 14, 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP `pid` and wait until it is stopped (the signal is asynchronous: until then it still runs,
    and may still take a lock)."""
    import os
    import signal
    import time

    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:
        text = open(f"/proc/{pid}/stat").read()
        if text[text.rindex(")") + 2] in "Tt":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not stop")
        time.sleep(0.001)


def busy_neighbour(ready: str, seconds: float, lock: bool = True, threads: int = 2) -> None:
    """A search worker's training, as a neighbour: the real `train_model` loop (ResNet-8, random
    Fashion-MNIST-shaped images, batch 64) for `seconds`, each step holding the compute lock shared when
    `lock`. Touches `ready` after its first step. Run it as `python -m edgecompress.testing neighbour
    READY SECONDS lock|nolock THREADS` (it uses runs_dir()'s lock files, as every worker does)."""
    from pathlib import Path

    from edgecompress.errors import TrialTimeoutError
    from edgecompress.evaluators.splits import TensorSplit
    from edgecompress.evaluators.train import TrainSettings, train_model

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randint(0, 256, (2048, 1, 28, 28), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (2048,), generator=g), (0.286,), (0.353,))
    model = create_model("resnet8", num_classes=10, in_chans=1)
    settings = TrainSettings(epochs=10**6, batch_size=64, augment=False, schedule="constant", lr=0.01,
                             memory_format="contiguous", compute_lock=lock, max_seconds=seconds)

    def on_step(step: int, total: int) -> None:
        if step == 1:
            Path(ready).touch()

    try:
        train_model(model, split, 28, settings, on_step=on_step)
    except TrialTimeoutError:
        pass


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 6 or sys.argv[1] != "neighbour":
        sys.exit("usage: python -m edgecompress.testing neighbour READY SECONDS lock|nolock THREADS")
    busy_neighbour(sys.argv[2], float(sys.argv[3]), sys.argv[4] == "lock", int(sys.argv[5]))
