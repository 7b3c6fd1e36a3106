"""Training memory format: never a crash or hang, never slower than contiguous, cost follows model size.

On AVX2-only CPUs oneDNN's channels-last backward of small pruned layers segfaults (1 thread) or hangs
(2 threads). ONEDNN_MAX_CPU_ISA=AVX2 reproduces that on an AVX-512 machine (it caps oneDNN's JIT
kernels; ATEN_CPU_CAPABILITY=avx2 caps ATen's), so both ISAs run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from edgecompress.evaluators.memformat import (
    MemoryFormatChoice,
    cached_memory_format,
    in_format,
    remember,
    worth_probing,
)

CHECK = Path(__file__).with_name("memformat_check.py")


# AVX2 is where the crash (1 thread) and the hang (2 threads) happen, so it runs in `make test`; the native
# ISA checks the same choice on this CPU's own kernels in `make test-slow` (~40 s each)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("isa", [pytest.param("native", marks=pytest.mark.slow), "AVX2"])
def test_pruned_resnet8_trains_in_the_chosen_format(isa: str, threads: int, tmp_path: Path) -> None:
    env = dict(os.environ, EDGECOMPRESS_RUNS=str(tmp_path))
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if isa != "native":  # oneDNN's JIT kernels and ATen's vectorized kernels as on an AVX2-only CPU
        env["ONEDNN_MAX_CPU_ISA"] = isa
        env["ATEN_CPU_CAPABILITY"] = isa.lower()
    proc = subprocess.run([sys.executable, str(CHECK), str(threads)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    for name, r in res.items():
        assert r["trained_steps"] == 4, name
        # the chosen format is never meaningfully slower than contiguous (ratios from one process)
        assert r["ratio"] <= 1.1, (name, r)
    # 75% pruning leaves ~1/16 of the MACs: its step must cost well under the unpruned model's
    assert res["prune75"]["chosen_s"] <= 0.6 * res["unpruned"]["chosen_s"], res


def test_single_channel_batches_get_canonical_strides() -> None:
    x = torch.randn(8, 28, 28, 1).permute(0, 3, 1, 2)  # what augmentation yields: "contiguous" yet NHWC
    assert x.is_contiguous() and x.stride() == (784, 1, 28, 1)
    assert in_format(x, torch.contiguous_format).stride() == (784, 784, 28, 1)
    assert in_format(x, torch.channels_last).stride() == (784, 1, 28, 1)
    assert torch.equal(in_format(x, torch.contiguous_format), x)


def test_forced_formats_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path))
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten())
    assert cached_memory_format(model, (4, 1, 8, 8), 1, mode="contiguous").format == "contiguous"
    assert cached_memory_format(model, (4, 1, 8, 8), 1, mode="channels_last").format == "channels_last"
    assert cached_memory_format(model, (4, 1, 8, 8), 1) is None  # auto and unknown: needs a probe
    remember(model, (4, 1, 8, 8), 1, "cpu", MemoryFormatChoice("contiguous", "probe hung"))
    assert (tmp_path / "cache" / "memory_format.json").is_file()
    assert cached_memory_format(model, (4, 1, 8, 8), 1).reason == "probe hung"
    assert cached_memory_format(model, (4, 1, 8, 8), 2) is None  # threads are part of the key
    with pytest.raises(ValueError, match=r"mode must be one of .* \(memory_format\)"):
        cached_memory_format(model, (4, 1, 8, 8), 1, mode="nhwc")


def test_probe_only_when_it_pays() -> None:
    assert not worth_probing(0.04, 40)  # a 1-epoch proxy fine-tune: the probe would cost more
    assert worth_probing(0.05, 3000)  # base training
