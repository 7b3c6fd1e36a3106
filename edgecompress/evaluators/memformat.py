"""Choose the training memory format (channels-last or contiguous) per model shape, safely.

Channels-last can be faster for conv training, but oneDNN's channels-last backward for small,
oddly-sized layers crashes (SIGSEGV, 1 thread) or hangs (2 threads) on AVX2-only CPUs (reproduced here
with ONEDNN_MAX_CPU_ISA=AVX2 on a 75%-pruned ResNet-8). So "auto" never tries it in the training
process: a short probe in a child process times a few steps of each format with a timeout, and
channels-last is used only when the probe finished and it was clearly faster. Choices are cached by
model shape, input, batch, threads, device and CPU (in memory and under runs/cache/).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress.runtime.timing import time_call
from edgecompress.utils import atomic_write_json, runs_dir, stable_hash

MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
PROBE_STEPS = 10  # timed steps per format (after 1 warm-up step)
PROBE_TIMEOUT_S = 60.0
SPEEDUP_NEEDED = 0.8  # channels-last must take <= 0.8x the contiguous step time to be chosen
# glibc's allocator as it settles in a worker that has trained before (dynamic mmap threshold at its 32 MiB
# cap, trim at twice that): in a fresh process a small model's contiguous step pays page faults on every
# step (returned and re-faulted buffers), which made a 75%-pruned ResNet-8 probe at 0.61-0.80x while the
# worker then ran channels-last at 1.13-1.2x the contiguous step time.
WARM_ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}

_MEMORY: dict[str, MemoryFormatChoice] = {}


@dataclass
class MemoryFormatChoice:
    """The format training uses and why (recorded in the trial's metrics)."""

    format: str  # "contiguous" or "channels_last"
    reason: str
    contiguous_step_s: float | None = None
    channels_last_step_s: float | None = None

    @property
    def torch_format(self) -> torch.memory_format:
        return torch.channels_last if self.format == "channels_last" else torch.contiguous_format


def cpu_signature() -> str:
    """CPU model and ISA flags that change which kernels run (AVX2, AVX-512, VNNI, AMX, oneDNN cap)."""
    from edgecompress.runtime.cpu_features import cpu_flags
    from edgecompress.runtime.latency import device_name

    flags = " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "sse4"))))
    return f"{device_name('cpu')}|{flags}|isa_cap={os.environ.get('ONEDNN_MAX_CPU_ISA', '')}"


def shape_signature(model: nn.Module) -> list[Any]:
    """Conv/linear weight shapes with stride and groups: what decides which kernels run."""
    sig: list[Any] = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            sig.append(["conv", list(m.weight.shape), list(m.stride), m.groups])
        elif isinstance(m, nn.Linear):
            sig.append(["linear", list(m.weight.shape)])
    return sig


def _cache_file() -> Path:
    return runs_dir() / "cache" / "memory_format.json"


def _key(model: nn.Module, in_shape: tuple[int, ...], threads: int, device: str) -> str:
    return stable_hash({"shapes": shape_signature(model), "input": list(in_shape), "threads": threads,
                        "device": device, "cpu": cpu_signature(), "torch": torch.__version__})


def cached_memory_format(
    model: nn.Module, in_shape: tuple[int, ...], threads: int, device: str = "cpu", mode: str = "auto"
) -> MemoryFormatChoice | None:
    """The choice without probing: forced by `mode`, trivial, or cached; None when a probe would be needed."""
    if mode not in MEMORY_FORMATS:
        raise ValueError(f"mode must be one of {MEMORY_FORMATS} (memory_format), got {mode!r}")
    if mode != "auto":
        return MemoryFormatChoice(mode, "set in the config")
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return MemoryFormatChoice("contiguous", "no conv layers")
    key = _key(model, in_shape, threads, device)
    if key not in _MEMORY:
        cached = _read_table(_cache_file()).get(key)
        if not cached:
            return None
        _MEMORY[key] = MemoryFormatChoice(**cached)
    return _MEMORY[key]


def choose_memory_format(
    model: nn.Module, in_shape: tuple[int, ...], threads: int, device: str = "cpu", mode: str = "auto"
) -> MemoryFormatChoice:
    """The training memory format for `model` on inputs `in_shape` (N, C, H, W), probing if not cached."""
    choice = cached_memory_format(model, in_shape, threads, device, mode)
    if choice is None:
        choice = probe_memory_format(model, in_shape, threads, device)
        remember(model, in_shape, threads, device, choice)
    return choice


def worth_probing(contiguous_step_s: float, remaining_steps: int) -> bool:
    """A probe (~2 s of process start-up + 10 steps) pays for itself only on runs long enough to repay it,
    even if channels-last were twice as fast."""
    probe_cost = 3.0 + 2 * (PROBE_STEPS + 1) * contiguous_step_s
    return 0.5 * contiguous_step_s * remaining_steps > probe_cost


def remember(model: nn.Module, in_shape: tuple[int, ...], threads: int, device: str,
             choice: MemoryFormatChoice) -> None:
    """Cache a choice in memory and under runs/cache/ (a read-only runs folder only costs a re-probe)."""
    key = _key(model, in_shape, threads, device)
    _MEMORY[key] = choice
    path = _cache_file()
    table = _read_table(path)
    table[key] = asdict(choice)
    try:
        atomic_write_json(path, table)
    except OSError:
        pass


def _read_table(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def probe_memory_format(model: nn.Module, in_shape: tuple[int, ...], threads: int,
                        device: str = "cpu", timeout: float = PROBE_TIMEOUT_S) -> MemoryFormatChoice:
    """Time training steps of both formats in a child process; a crash or hang there means contiguous.

    Contiguous runs first (it is the safe format); channels-last then gets max(10 s, 50x its time) before
    it counts as hung.
    """
    t0 = time.monotonic()
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgecompress-memformat-") as tmp:
        mpath = Path(tmp) / "model.pt"
        torch.save(model, mpath)
        cmd = [sys.executable, "-m", "edgecompress.evaluators.memformat", str(mpath),
               ",".join(map(str, in_shape)), str(threads), device]
        env = {**WARM_ALLOCATOR_ENV, **os.environ}  # a user's own allocator settings win
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        deadline = t0 + timeout
        hung = False
        assert proc.stdout is not None
        while "channels_last" not in times:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                hung = True
                break
            line = proc.stdout.readline()
            if not line:
                break  # the child exited
            if line.startswith("step "):
                _, fmt, secs = line.split()
                times[fmt] = float(secs)
                if fmt == "contiguous" and len(times) == 1:
                    deadline = time.monotonic() + max(10.0, 50 * (PROBE_STEPS + 1) * float(secs))
        if hung:
            proc.kill()
        rc = proc.wait()
        proc.stdout.close()
    cf, cl, ratio = times.get("contiguous"), times.get("channels_last"), times.get("ratio")
    what = "channels-last" if cf is not None else "training"
    if hung:
        return MemoryFormatChoice("contiguous", f"{what} probe hung (killed after "
                                  f"{time.monotonic() - t0:.0f} s)", cf, cl)
    if rc != 0:
        how = f"signal {-rc}" if rc < 0 else f"exit {rc}"
        return MemoryFormatChoice("contiguous", f"{what} probe process died ({how})", cf, cl)
    if cf is None or cl is None or ratio is None:
        return MemoryFormatChoice("contiguous", "probe gave no timing", cf, cl)
    if ratio <= SPEEDUP_NEEDED:
        return MemoryFormatChoice("channels_last", f"probe: {ratio:.2f}x the contiguous step time", cf, cl)
    return MemoryFormatChoice("contiguous", f"probe: channels-last {ratio:.2f}x the contiguous step time", cf, cl)


def in_format(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """`x` with the canonical strides of `fmt`. With one channel (or 1x1 images) a tensor is "contiguous"
    in both formats, so `.contiguous()` keeps whatever strides it has, and kernels pick their path from
    the strides: an augmented Fashion-MNIST batch (784, 1, 28, 1) took the channels-last path that crashes."""
    want = torch.empty_like(x, memory_format=fmt)
    if x.stride() == want.stride():
        return x
    return want.copy_(x)


class _Stepper:
    """One model copy training in one memory format; `step()` returns its seconds."""

    def __init__(self, model: nn.Module, x: torch.Tensor, fmt: torch.memory_format) -> None:
        self.model = model.to(memory_format=fmt).train()
        self.x = in_format(x, fmt)
        self.y = torch.arange(x.shape[0], device=x.device) % 2
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3)

    def step(self) -> float:
        import torch.nn.functional as F

        def one() -> None:
            loss = F.cross_entropy(self.model(self.x), self.y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

        # a probe inside a training process: timed by the engine without taking the compute lock
        seconds, _ = time_call(one, torch.cuda.synchronize if self.x.is_cuda else None)
        return seconds


def time_formats(model: nn.Module, x: torch.Tensor, steps: int = PROBE_STEPS,
                 on_contiguous: Any = None, channels_last: bool = True) -> dict[str, float]:
    """Fastest training-step seconds per format, and "ratio": the median over interleaved step pairs of
    channels-last / contiguous time (pairs see the same machine load, so the ratio is robust to drift).
    Contiguous (the safe format) runs first; `on_contiguous(seconds)` is told its time before
    channels-last runs at all, so a crash there still leaves a contiguous figure. `channels_last` False
    times contiguous alone (where channels-last is known to crash)."""
    import copy

    cf = _Stepper(copy.deepcopy(model), x, torch.contiguous_format)
    cf.step()  # the first step allocates and picks kernels
    times = {"contiguous": [cf.step()], "channels_last": []}
    if on_contiguous is not None:
        on_contiguous(times["contiguous"][0])
    cl = _Stepper(copy.deepcopy(model), x, torch.channels_last) if channels_last else None
    if cl is not None:
        cl.step()
    for _ in range(steps):
        if cl is not None:
            times["channels_last"].append(cl.step())
        times["contiguous"].append(cf.step())
    out = {k: min(v) for k, v in times.items() if v}
    if times["channels_last"]:
        ratios = sorted(a / b for a, b in zip(times["channels_last"], times["contiguous"][1:]))
        out["ratio"] = ratios[len(ratios) // 2]
    return out


def _probe_main(argv: list[str]) -> None:
    """Child process: 'step FORMAT SECONDS' lines, contiguous first (see time_formats)."""
    mpath, shape, threads, device = argv
    torch.set_num_threads(int(threads))
    model = torch.load(mpath, weights_only=False).to(device)
    x = torch.randn(*[int(s) for s in shape.split(",")], device=device)
    res = time_formats(model, x, on_contiguous=lambda s: print(f"step contiguous {s:.6f}", flush=True))
    print(f"step contiguous {res['contiguous']:.6f}", flush=True)
    print(f"step ratio {res['ratio']:.6f}", flush=True)
    print(f"step channels_last {res['channels_last']:.6f}", flush=True)


if __name__ == "__main__":
    _probe_main(sys.argv[1:])
