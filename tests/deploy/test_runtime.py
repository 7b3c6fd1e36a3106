"""Deploy backends on a tiny real Fashion-MNIST model: ONNX Runtime fp32/int8, torch eager/int8/bf16."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgecompress.errors import ConfigError
from edgecompress.evaluators.models import create_model
from edgecompress.runtime.backend import deploy
from edgecompress.runtime.backend_ort import ort_session_options, quantized_conv_share
from edgecompress.runtime.cpu_features import resolve_int8_scheme
from edgecompress.runtime.latency import LatencyStats
from edgecompress.runtime.sub8bit import SCALED_LATENCY_KEYS, estimate_latency, estimate_sub8bit

ORT_PREDICT = Path(__file__).with_name("ort_predict.py")
MEAN, STD = 0.2860, 0.3530


def _read(folder: Path, prefix: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First n images/labels of a Fashion-MNIST IDX gzip pair (16-byte / 8-byte headers)."""
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz") as f:
        img = np.frombuffer(f.read(16 + n * 784)[16:], dtype=np.uint8).reshape(n, 1, 28, 28)
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz") as f:
        lab = np.frombuffer(f.read(8 + n)[8:], dtype=np.uint8)
    x = (torch.from_numpy(img.copy()).float() / 255 - MEAN) / STD
    return x, torch.from_numpy(lab.astype(np.int64))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a shared 2-core machine two OpenMP threads ran training ~15x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fmnist_model(_one_thread, fmnist_dir: Path) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A narrow ResNet-8 trained for a few seconds on 2000 real training images; 500 held-out test images."""
    torch.manual_seed(0)
    x_tr, y_tr = _read(fmnist_dir, "train", 2000)
    x_te, _ = _read(fmnist_dir, "t10k", 500)
    model = create_model("resnet8", num_classes=10, in_chans=1, widths=(8, 16, 32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(3):
        perm = torch.randperm(len(x_tr))
        for i in range(0, len(x_tr), 100):
            idx = perm[i:i + 100]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, x_tr, x_te


def _calib(x_tr: torch.Tensor) -> list[torch.Tensor]:
    return [x_tr[i:i + 64] for i in range(0, 512, 64)]


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


def test_ort_fp32_matches_torch_with_dynamic_batch(fmnist_model, tmp_path: Path) -> None:
    model, _, x_te = fmnist_model
    dep = deploy(model, x_te[:1], backend="onnxruntime", precision="fp32", workdir=tmp_path)
    with torch.no_grad():
        ref = model(x_te[:37])
    assert torch.allclose(dep.run(x_te[:37]), ref, atol=1e-4)
    assert torch.allclose(dep.run(x_te[:1]), ref[:1], atol=1e-4)
    assert dep.precision == "fp32" and dep.provider == "CPUExecutionProvider"
    assert dep.runtime_version.startswith("onnxruntime ")
    assert dep.path is not None and Path(dep.path).stat().st_size == dep.size_bytes


def test_ort_int8_agrees_with_fp32_on_fashion_mnist(fmnist_model, tmp_path: Path) -> None:
    model, x_tr, x_te = fmnist_model
    fp32 = deploy(model, x_te[:1], backend="onnxruntime", precision="fp32")
    int8 = deploy(model, x_te[:1], backend="onnxruntime", precision="int8", calib_batches=_calib(x_tr),
                  workdir=tmp_path)
    assert int8.base_precision == "int8" and "QDQ" in int8.precision
    assert int8.int8_scheme == resolve_int8_scheme()[0] and int8.int8_scheme.upper() in int8.precision
    assert _agreement(int8.run(x_te), fp32.run(x_te)) >= 0.97
    quantized, convs = quantized_conv_share(int8.path)
    assert convs == 9 and quantized == convs  # every conv runs int8: agreement not bought with fp32 layers
    assert int8.size_bytes < 0.6 * fp32.size_bytes  # int8 weights shipped (QDQ scales add some)
    assert fp32.path is None and Path(int8.path).name == "model_int8.onnx"


def test_int8_scheme_follows_the_cpu() -> None:
    assert resolve_int8_scheme("auto", {"avx2", "avx512f", "avx512_vnni"}) == ("u8s8", "CPU with VNNI")
    assert resolve_int8_scheme("auto", {"avx2", "avx_vnni"})[0] == "u8s8"
    assert resolve_int8_scheme("auto", {"avx2", "fma"})[0] == "u8u8"
    assert resolve_int8_scheme("auto", {"avx2", "avx512f", "avx512bw"})[0] == "u8u8"  # Skylake-X: no VNNI
    assert resolve_int8_scheme("auto", {"neon", "asimd"})[0] == "u8s8"
    assert resolve_int8_scheme("u8u8", {"avx512_vnni"}) == ("u8u8", "set explicitly")
    with pytest.raises(ConfigError, match="`int8_scheme` must be one of"):
        resolve_int8_scheme("s4s4")


def test_reduced_range_scheme_builds_and_agrees(fmnist_model, tmp_path: Path) -> None:
    model, x_tr, x_te = fmnist_model
    fp32 = deploy(model, x_te[:1], backend="onnxruntime", precision="fp32")
    rr = deploy(model, x_te[:1], backend="onnxruntime", precision="int8", calib_batches=_calib(x_tr),
                workdir=tmp_path, int8_scheme="u8s8_rr")
    assert rr.int8_scheme == "u8s8_rr" and "7-bit weights" in rr.precision
    assert quantized_conv_share(rr.path) == (9, 9)
    assert _agreement(rr.run(x_te), fp32.run(x_te)) >= 0.97


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.needs("qemu")  # qemu-user on x86_64 emulates an AVX2 CPU
def test_ort_int8_agrees_on_an_avx2_cpu_without_vnni(fmnist_model, tmp_path: Path) -> None:
    """ONNX Runtime picks kernels from CPUID, so an emulated Haswell (AVX2, no VNNI, no AVX-512) runs the
    AVX2 int8 kernels on any x86 machine. The scheme chosen for such a CPU must keep agreement >= 0.97."""
    model, x_tr, x_te = fmnist_model
    haswell = {"sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c"}
    scheme, _ = resolve_int8_scheme("auto", haswell)
    deploy(model, x_te[:1], backend="onnxruntime", precision="fp32", workdir=tmp_path / "fp32")
    for s in sorted({scheme, "u8s8"}):
        deploy(model, x_te[:1], backend="onnxruntime", precision="int8", calib_batches=_calib(x_tr),
               workdir=tmp_path / s, int8_scheme=s)
    np.save(tmp_path / "x.npy", x_te.numpy())
    models = [str(tmp_path / "fp32" / "model.onnx")] + [str(tmp_path / s / "model_int8.onnx")
                                                         for s in sorted({scheme, "u8s8"})]
    proc = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, str(ORT_PREDICT), str(tmp_path / "x.npy"),
                           *models], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    preds = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith("/"))
    ref = np.array(preds[models[0]].split(), dtype=int)
    agree = {Path(m).parent.name: float((np.array(preds[m].split(), dtype=int) == ref).mean()) for m in models[1:]}
    assert scheme == "u8u8" and agree["u8u8"] >= 0.97, agree


def test_torch_int8_agrees_with_fp32(fmnist_model) -> None:
    model, x_tr, x_te = fmnist_model
    # (x, y) pairs as a loader yields them are accepted for calibration
    dep = deploy(model, x_te[:1], backend="torch", precision="int8",
                 calib_batches=[(b, None) for b in _calib(x_tr)])
    assert dep.base_precision == "int8" and ("FX" in dep.precision or "PT2E" in dep.precision)
    with torch.no_grad():
        ref = model(x_te)
    assert _agreement(dep.run(x_te), ref) >= 0.97


def test_torch_fp32_and_16bit_on_cpu(fmnist_model) -> None:
    model, _, x_te = fmnist_model
    with torch.no_grad():
        ref = model(x_te[:64])
    eager = deploy(model, x_te[:1], backend="torch", precision="fp32")
    assert torch.equal(eager.run(x_te[:64]), ref)
    assert eager.provider == "torch eager cpu" and eager.size_bytes > 0
    half = deploy(model, x_te[:1], backend="torch", precision="fp16")
    if half.base_precision == "bf16":
        assert half.precision == "bf16 (fp16 unsupported on cpu)"
        assert _agreement(half.run(x_te[:64]), ref) >= 0.9
        assert half.run(x_te[:2]).dtype == torch.float32
    else:
        assert half.precision == "fp32 (fp16 unsupported on cpu)"
    # the caller's model is untouched
    assert next(model.parameters()).dtype == torch.float32 and not model.training


def test_ort_16bit_on_cpu_says_it_falls_back(fmnist_model) -> None:
    model, _, x_te = fmnist_model
    dep = deploy(model, x_te[:1], backend="onnxruntime", precision="fp16")
    assert dep.precision == "fp32 (fp16 unsupported on onnxruntime cpu)" and dep.base_precision == "fp32"


def test_measure_records_backend(fmnist_model, tmp_path: Path) -> None:
    model, _, x_te = fmnist_model
    dep = deploy(model, x_te[:1], backend="onnxruntime", threads=1)
    stats = dep.measure(x_te[:8], min_repeats=5, max_seconds=0.3, lock_path=tmp_path / "l")
    assert isinstance(stats, LatencyStats)
    assert stats.batch_size == 8 and stats.threads == 1 and stats.median_ms > 0
    assert stats.backend == "onnxruntime" and stats.runtime_version == dep.runtime_version


def test_bad_arguments_are_named(fmnist_model) -> None:
    model, _, x_te = fmnist_model
    with pytest.raises(ValueError, match="backend"):
        deploy(model, x_te[:1], backend="tflite")
    with pytest.raises(ValueError, match="precision"):
        deploy(model, x_te[:1], precision="int4")
    with pytest.raises(ValueError, match="calib_batches"):
        deploy(model, x_te[:1], precision="int8")
    with pytest.raises(ValueError, match="example_input"):
        deploy(model, x_te[0])


def test_estimate_latency_scales_by_bitops() -> None:
    assert estimate_latency(2.0, 8, 4, 8) == pytest.approx(1.0)
    assert estimate_latency(2.0, (8, 8), 4, 4) == pytest.approx(0.5)
    assert estimate_latency(3.0, 32, 4, 4) == pytest.approx(3.0 * 16 / 1024)
    with pytest.raises(ValueError, match="target_w_bits"):
        estimate_latency(1.0, 8, 0, 8)
    with pytest.raises(ValueError, match="measured_ms"):
        estimate_latency(0.0, 8, 4, 4)


def test_estimate_sub8bit_scales_from_the_deployed_precision() -> None:
    m = {k: 4.0 for k in SCALED_LATENCY_KEYS} | {"size_bytes": 32_000, "device_name": "cpu X", "latency_cv": 0.1}
    from_int8 = estimate_sub8bit(m, "int8", 4, 2)
    assert set(from_int8) == {*SCALED_LATENCY_KEYS, "latency_source", "latency_note", "size_bytes"}
    assert all(from_int8[k] == pytest.approx(4.0 * 8 / 64) for k in SCALED_LATENCY_KEYS)
    assert from_int8["size_bytes"] == 16_000 and from_int8["latency_source"] == "estimated"
    assert from_int8["latency_note"].startswith("4/2-bit latency estimated from the int8 model measured on cpu X")
    from_fp32 = estimate_sub8bit(m, "fp32", 4, 2)  # int8 fell back to fp32: 16x less than from int8
    assert from_fp32["latency_ms"] == pytest.approx(4.0 * 8 / 1024) and from_fp32["size_bytes"] == 4_000
    assert estimate_sub8bit({"latency_ms": 1.0}, "int8", 4, 4) == {
        "latency_ms": 0.25, "latency_source": "estimated",
        "latency_note": "4/4-bit latency estimated from the int8 model measured x BitOPs ratio (no sub-8-bit "
                        "kernels on this runtime)"}
    with pytest.raises(ValueError, match="base_precision"):
        estimate_sub8bit(m, "fp32 (int8 unsupported on torch cuda)", 4, 4)


def test_run_array_matches_run(fmnist_model) -> None:
    model, x_tr, x_te = fmnist_model
    a = x_te[:5].numpy()
    for dep in (deploy(model, x_te[:1], backend="onnxruntime", precision="fp32"),
                deploy(model, x_te[:1], backend="onnxruntime", precision="int8", calib_batches=_calib(x_tr)),
                deploy(model, x_te[:1], backend="torch", precision="fp32")):
        out = dep.run_array(a)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (5, 10)
        np.testing.assert_array_equal(out, dep.run(x_te[:5]).numpy())


def test_ort_session_options() -> None:
    ort = pytest.importorskip("onnxruntime")
    so = ort_session_options(3)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1 and so.log_severity_level == 3
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(RuntimeError):  # not set: ONNX Runtime's default (spinning)
        so.get_session_config_entry("session.intra_op.allow_spinning")
    assert ort_session_options(1, spinning=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.force_spinning_stop") == "1"  # spins in a run, not after


def test_ort_session_leaves_no_thread_spinning_after_a_run(fmnist_model) -> None:
    """The reference is timed right after the model (measure_paired): the model's pool must not keep
    spinning on the cores once its run returned (ONNX Runtime's default spun ~20 ms after each run here)."""
    import os
    import time

    model, _, x_te = fmnist_model
    dep = deploy(model, x_te[:1], backend="onnxruntime", threads=2)
    run = dep.timer(x_te[:1])
    for _ in range(50):
        run()
    cpu = 0.0
    for _ in range(10):
        run()
        t0 = os.times()
        time.sleep(0.05)
        t1 = os.times()
        cpu += (t1.user + t1.system) - (t0.user + t0.system)
    assert cpu < 0.15, f"{cpu:.2f} s of CPU while idle for 0.5 s"


@pytest.mark.slow
def test_torch_compile_runs(fmnist_model) -> None:
    model, _, x_te = fmnist_model
    dep = deploy(model, x_te[:4], backend="torch_compile", precision="fp32")
    with torch.no_grad():
        ref = model(x_te[:4])
    assert torch.allclose(dep.run(x_te[:4]), ref, atol=1e-4)
    assert dep.provider == "torch inductor cpu" and dep.build_seconds > 0


@pytest.mark.needs("cuda")
def test_cuda_fp16_torch(fmnist_model) -> None:
    model, _, x_te = fmnist_model
    dep = deploy(model, x_te[:1], backend="torch", precision="fp16", device="cuda")
    assert dep.precision == "fp16"
    out = dep.run(x_te[:64].cuda())
    assert out.device.type == "cuda" and out.dtype == torch.float32
    with torch.no_grad():
        assert _agreement(out.cpu(), model(x_te[:64])) >= 0.95


@pytest.mark.needs("cuda")
def test_cuda_onnxruntime_provider(fmnist_model) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider")
    model, _, x_te = fmnist_model
    dep = deploy(model, x_te[:1], backend="onnxruntime", precision="fp16", device="cuda")
    assert dep.precision == "fp16" and dep.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    with torch.no_grad():
        assert _agreement(dep.run(x_te[:64]), model(x_te[:64])) >= 0.95
