"""Turn an nn.Module into the form it will ship on (ONNX Runtime, eager torch, torch.compile) and time it.

Latency is only meaningful on the runtime the model ships on, so every precision is built for its
backend: int8 is ONNX Runtime static QDQ (per-channel weights) or torch int8 (torchao/torch.ao PT2E
when importable, else torch.ao FX PTQ on the x86 engine); 16-bit is fp16 on CUDA and bf16 on CPU where
it runs, else fp32. `Deployed.precision` says what the model really is, fallbacks included. Below 8 bits
there are no real kernels: `estimate_latency` scales a measured latency by the BitOPs ratio and
`estimate_sub8bit` applies it to a whole measurement.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgecompress.deploy.latency import LatencyStats, PairedStats, device_name, measure_latency, measure_paired
from edgecompress.errors import CompressionError, EdgeCompressError
from edgecompress.utils import stable_hash

BACKENDS = ("onnxruntime", "torch", "torch_compile")
# ONNX Runtime int8 schemes (activations, weights). U8S8 is fastest, but on x86 CPUs without VNNI its
# kernels (vpmaddubsw) saturate 16-bit sums: measured under emulation of an AVX2 CPU, a Fashion-MNIST
# ResNet-8 agreed with fp32 on 96.4% of images with U8S8, 97.8% with U8S8 + reduce_range, 98.8% with U8U8,
# as with U8S8 on a VNNI CPU. So "auto" is U8S8 with VNNI (or off x86) and U8U8 without. U8U8 kernels
# are slower (0.78x fp32 on a VNNI EPYC, bench/results/int8_schemes.json); "u8s8_rr" (7-bit weights,
# U8S8 kernels, 97.8% in that emulation) is the speed-first choice for a CPU without VNNI.
INT8_SCHEMES = ("auto", "u8s8", "u8u8", "u8s8_rr")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class Deployed:
    """A model in its shipped form: `run(x)` gives float32 logits on x's device; `timer(x)` feeds latency."""

    backend: str
    precision: str  # what it really is, e.g. "bf16", "fp32 (fp16 unsupported on cpu)", "int8 (ort qdq ...)"
    runtime_version: str
    provider: str  # execution provider / engine, e.g. CPUExecutionProvider, torch eager cpu
    size_bytes: int
    path: str | None
    device: str
    threads: int
    build_seconds: float = 0.0
    int8_scheme: str | None = None  # "u8s8" or "u8u8" for onnxruntime int8 (see INT8_SCHEMES)
    _call: Callable[[Any], Any] = field(default=None, repr=False)  # type: ignore[assignment]
    _prepare: Callable[[torch.Tensor], Any] = field(default=None, repr=False)  # type: ignore[assignment]
    _to_tensor: Callable[[Any], torch.Tensor] = field(default=None, repr=False)  # type: ignore[assignment]
    _prepare_array: Callable[[np.ndarray], Any] | None = field(default=None, repr=False)  # numpy in, no torch

    @property
    def base_precision(self) -> str:
        """The precision without its note: fp32, fp16, bf16 or int8."""
        return self.precision.split()[0]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits for a batch `x` (N, C, H, W), on the same device as `x`."""
        with torch.inference_mode():
            out = self._to_tensor(self._call(self._prepare(x)))
        return out.float().to(x.device)

    def run_array(self, a: np.ndarray) -> np.ndarray:
        """Float32 logits (numpy) for an N x C x H x W float32 array, for array-in/array-out serving.

        ONNX Runtime: the session is called on the array directly (no torch dispatch). Torch backends:
        the array is wrapped (no copy) and the model runs under inference_mode.
        """
        if self._prepare_array is not None:
            out = self._call(self._prepare_array(a))
        else:
            with torch.inference_mode():
                out = self._call(self._prepare(torch.from_numpy(a)))
        if isinstance(out, torch.Tensor):
            return out.float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    def timer(self, x: torch.Tensor) -> Callable[[], Any]:
        """A zero-argument callable running one batch with the input already in the runtime's form."""
        prepared = self._prepare(x)
        call = self._call
        return lambda: call(prepared)

    def measure(self, x: torch.Tensor, **kwargs: Any) -> LatencyStats:
        """Latency of one batch `x` on this deployment (kwargs go to measure_latency)."""
        kwargs.setdefault("threads", self.threads)
        clock = "host" if self.backend == "onnxruntime" else "auto"  # ORT calls block until done
        return measure_latency(
            self.timer(x),
            batch_size=int(x.shape[0]),
            device=self.device,
            backend=self.backend,
            runtime_version=self.runtime_version,
            clock=clock,
            **kwargs,
        )

    def measure_paired(self, x: torch.Tensor, ref: Deployed, ref_x: torch.Tensor, **kwargs: Any) -> PairedStats:
        """Latency of one batch `x` interleaved with `ref` on `ref_x` (deploy/latency.py measure_paired).

        `ref` is the reference deployed the same way (same device; kwargs go to measure_paired)."""
        if torch.device(ref.device) != torch.device(self.device):
            raise ValueError(f"measure_paired: the reference runs on {ref.device}, the model on {self.device}")
        kwargs.setdefault("threads", self.threads)
        clock = "host" if "onnxruntime" in (self.backend, ref.backend) else "auto"
        return measure_paired(
            self.timer(x),
            ref.timer(ref_x),
            batch_size=int(x.shape[0]),
            device=self.device,
            backend=self.backend,
            runtime_version=self.runtime_version,
            clock=clock,
            **kwargs,
        )

    def calibration_key(self, shape: tuple[int, ...], batch_size: int) -> dict[str, Any]:
        """What a reference's calibrated latency depends on: machine, runtime, threads, shapes, precision."""
        flags = sorted(cpu_flags())
        return {"device": str(self.device), "device_name": device_name(self.device),
                "cpu_flags": stable_hash(flags, 16) if flags else "", "backend": self.backend,
                "provider": self.provider, "threads": self.threads, "batch_size": int(batch_size),
                "shape": [int(v) for v in shape], "precision": self.precision,
                "runtime_version": self.runtime_version, "torch_version": torch.__version__}


def deploy(
    model: nn.Module,
    example_input: torch.Tensor,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    calib_batches: Iterable[Any] | None = None,
    device: str | torch.device = "cpu",
    threads: int = 2,
    workdir: str | Path | None = None,
    exporter: str = "legacy",
    spinning: bool = True,
    int8_scheme: str = "auto",
) -> Deployed:
    """Build `model` for `backend` at `precision` on `device`; the caller's model is not modified.

    `calib_batches` (tensors or (x, y) pairs from training data) is required for int8. `workdir` keeps
    the built files (model.onnx, model_int8.onnx, model.pt); without it they live in a temp folder
    that is removed (`path` is then None; `size_bytes` is still measured). `exporter` is "legacy"
    (TorchScript-based, ~0.1 s per ResNet-8) or "dynamo" (~1.5-3 s here, needs onnxscript).
    `int8_scheme` (onnxruntime int8): "auto" picks for the CPU this runs on, see `resolve_int8_scheme`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"deploy: backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"deploy: precision must be one of {PRECISIONS}, got {precision!r}")
    if int8_scheme not in INT8_SCHEMES:
        raise ValueError(f"deploy: int8_scheme must be one of {INT8_SCHEMES}, got {int8_scheme!r}")
    if exporter not in ("legacy", "dynamo"):
        raise ValueError(f"deploy: exporter must be 'legacy' or 'dynamo', got {exporter!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"deploy: threads must be a positive int, got {threads!r}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise ValueError("deploy: example_input must be a 4-d tensor (N, C, H, W)")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EdgeCompressError(f"deploy: device {dev} requested but CUDA is not available on this machine")
    if precision == "int8" and calib_batches is None:
        raise ValueError("deploy: precision 'int8' needs calib_batches (training images for calibration)")

    model = copy.deepcopy(model).cpu().float().eval()
    example = example_input.detach().cpu().float()
    calib = [_calib_tensor(b) for b in calib_batches] if calib_batches is not None else []
    t0 = time.perf_counter()
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="edgecompress-deploy-") as tmp:
            dep = _build(model, example, backend, precision, calib, dev, threads, Path(tmp), exporter, spinning,
                         int8_scheme)
            dep.path = None  # the temp folder is gone; the session holds the model in memory
    else:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        dep = _build(model, example, backend, precision, calib, dev, threads, Path(workdir), exporter, spinning,
                     int8_scheme)
    dep.build_seconds = time.perf_counter() - t0
    return dep


def estimate_latency(
    measured_ms: float, measured_bits: int | tuple[int, int], target_w_bits: int, target_a_bits: int
) -> float:
    """ESTIMATE (no real kernels) of a sub-8-bit model's latency: measured latency x BitOPs ratio.

    MACs are the same for both, so the BitOPs ratio is (w x a bits of the target) / (w x a bits of the
    measured model). Callers must record `latency_source="estimated"` next to the value.
    """
    mw, ma = (measured_bits, measured_bits) if isinstance(measured_bits, int) else measured_bits
    for name, v in (("measured w bits", mw), ("measured a bits", ma), ("target_w_bits", target_w_bits),
                    ("target_a_bits", target_a_bits)):
        if not isinstance(v, int) or not 1 <= v <= 32:
            raise ValueError(f"estimate_latency: {name} must be an int in 1..32, got {v!r}")
    if not measured_ms > 0:
        raise ValueError(f"estimate_latency: measured_ms must be > 0, got {measured_ms!r}")
    return float(measured_ms) * (target_w_bits * target_a_bits) / (mw * ma)


#: latency keys of a measurement (EvalResult metrics) that a sub-8-bit estimate scales (the reference's
#: own medians, CVs and load are left as measured)
SCALED_LATENCY_KEYS = tuple(
    f"{p}_{k}" for p in ("latency", "latency_batch")
    for k in ("ms", "p90_ms", "mean_ms", "ci_low_ms", "ci_high_ms", "abs_ms", "abs_ci_low_ms", "abs_ci_high_ms",
              "ratio", "ratio_ci_low", "ratio_ci_high")
)
PRECISION_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8}


def estimate_sub8bit(metrics: dict[str, Any], base_precision: str, w_bits: int, a_bits: int) -> dict[str, Any]:
    """ESTIMATE of a w_bits/a_bits model (w_bits < 8) from the measurement of its deployed form.

    `metrics` holds the measured latencies (SCALED_LATENCY_KEYS, those present are scaled) and
    `size_bytes` of the deployed form, whose precision is `base_precision` (`Deployed.base_precision`:
    int8, or fp32 where int8 fell back, e.g. torch on CUDA). Latency is scaled by the BitOPs ratio from the
    base precision's bits (estimate_latency) and size by w_bits / base bits. Returns the updated keys
    with latency_source="estimated" and a latency_note, to merge into `metrics`.
    """
    if base_precision not in PRECISION_BITS:
        raise ValueError(f"estimate_sub8bit: base_precision must be one of {list(PRECISION_BITS)}, "
                         f"got {base_precision!r}")
    bits = PRECISION_BITS[base_precision]
    out: dict[str, Any] = {k: estimate_latency(metrics[k], bits, w_bits, a_bits)
                           for k in SCALED_LATENCY_KEYS if k in metrics}
    where = f" on {metrics['device_name']}" if metrics.get("device_name") else ""
    out["latency_source"] = "estimated"
    out["latency_note"] = (f"{w_bits}/{a_bits}-bit latency estimated from the {base_precision} model measured{where} "
                           "x BitOPs ratio (no sub-8-bit kernels on this runtime)")
    if metrics.get("latency_protocol"):  # the measured model's latency is itself drift-corrected
        out["latency_note"] += f"; measured {metrics['latency_protocol']}"
    if "size_bytes" in metrics:
        out["size_bytes"] = int(round(metrics["size_bytes"] * w_bits / bits))
    return out


# ---- builders ----------------------------------------------------------------------------------
def _calib_tensor(batch: Any) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("deploy: calib_batches must yield 4-d tensors or (x, y) pairs")
    return x.detach().cpu().float()


def _build(model: nn.Module, example: torch.Tensor, backend: str, precision: str, calib: list[torch.Tensor],
           dev: torch.device, threads: int, workdir: Path, exporter: str, spinning: bool = True,
           int8_scheme: str = "auto") -> Deployed:
    if backend == "onnxruntime":
        return _build_ort(model, example, precision, calib, dev, threads, workdir, exporter, spinning, int8_scheme)
    return _build_torch(model, example, backend, precision, calib, dev, threads, workdir)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, exporter: str = "legacy") -> Path:
    """Export to ONNX with a dynamic batch axis (input 'input', output 'logits')."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if exporter == "dynamo":
                batch = torch.export.Dim("batch")
                torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], opset_version=18, dynamo=True,
                                  dynamic_shapes={"x": {0: batch}}, verbose=False)
            else:
                torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET, dynamo=False,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except Exception as e:  # noqa: BLE001 - the exporter raises many types
            name = type(model).__name__
            raise CompressionError(f"ONNX export ({exporter}) of {name} failed: {e}") from None
    return path


def _ort_providers(dev: torch.device) -> list[Any]:
    import onnxruntime as ort

    if dev.type != "cuda":
        return ["CPUExecutionProvider"]
    avail = ort.get_available_providers()
    opts = {"device_id": dev.index or 0}
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in avail:
        providers.append(("TensorrtExecutionProvider", dict(opts, trt_fp16_enable=True)))
    if "CUDAExecutionProvider" in avail:
        providers.append(("CUDAExecutionProvider", opts))
    if not providers:
        raise EdgeCompressError(
            f"onnxruntime {ort.__version__} has no CUDA execution provider here (install onnxruntime-gpu)"
        )
    return [*providers, "CPUExecutionProvider"]


def _calib_reader(batches: list[torch.Tensor]) -> Any:
    """An onnxruntime CalibrationDataReader over a list of float tensors."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{INPUT_NAME: b.numpy()} for b in batches])

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    return _Reader()


def _build_ort(model: nn.Module, example: torch.Tensor, precision: str, calib: list[torch.Tensor],
               dev: torch.device, threads: int, workdir: Path, exporter: str, spinning: bool = True,
               int8_scheme: str = "auto") -> Deployed:
    import onnxruntime as ort

    cuda = dev.type == "cuda"
    real = precision
    in_dtype = np.float32
    if precision in ("fp16", "bf16"):
        if cuda and precision == "fp16":
            model, example = model.to(dev).half(), example.to(dev).half()
            in_dtype = np.float16
        else:
            real = f"fp32 ({precision} unsupported on onnxruntime {dev.type})"
    fname = "model_fp16.onnx" if in_dtype == np.float16 else "model.onnx"
    path = export_onnx(model, example, workdir / fname, exporter)
    scheme, why = resolve_int8_scheme(int8_scheme) if precision == "int8" else (None, "")
    if precision == "int8":
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        reader = _calib_reader(calib)
        pre = workdir / "model_pre.onnx"
        qpath = workdir / "model_int8.onnx"
        try:
            quant_pre_process(str(path), str(pre))
            quantize_static(str(pre), str(qpath), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QUInt8 if scheme == "u8u8" else QuantType.QInt8,
                            reduce_range=scheme == "u8s8_rr")
        except Exception as e:  # noqa: BLE001
            name = type(model).__name__
            raise CompressionError(f"onnxruntime int8 quantisation of {name} failed: {e}") from None
        pre.unlink(missing_ok=True)
        path = qpath
        label = "U8S8, 7-bit weights" if scheme == "u8s8_rr" else scheme.upper()
        real = f"int8 (onnxruntime static QDQ, per-channel weights, {label}: {why})"

    sess = ort.InferenceSession(str(path), sess_options=ort_session_options(threads, spinning),
                                providers=_ort_providers(dev))

    def prepare_array(a: np.ndarray) -> dict[str, Any]:
        return {INPUT_NAME: a.astype(in_dtype, copy=False)}

    def prepare(x: torch.Tensor) -> dict[str, Any]:
        return prepare_array(x.detach().cpu().numpy())

    return Deployed(
        backend="onnxruntime", precision=real, runtime_version=f"onnxruntime {ort.__version__}",
        provider=sess.get_providers()[0], size_bytes=serialized_size(path), path=str(path),
        device=str(dev), threads=threads, int8_scheme=scheme,
        _call=lambda feed: sess.run(None, feed)[0], _prepare=prepare, _prepare_array=prepare_array,
        _to_tensor=lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)),
    )


_GLOBAL_POOL: dict[str, int] = {}


def use_global_thread_pool(threads: int) -> int:
    """Give this process's ONNX Runtime sessions ONE shared intra-op pool (onnxruntime.set_global_thread_pool_sizes;
    every later session gets use_per_session_threads = False, which ORT then requires). The first call fixes
    the size; returns it. For several sessions called in turn (a LeanCascade): no idle pool spins on the cores
    the next session needs."""
    import onnxruntime as ort

    if "threads" not in _GLOBAL_POOL:
        ort.set_global_thread_pool_sizes(int(threads), 1)
        _GLOBAL_POOL["threads"] = int(threads)
    return _GLOBAL_POOL["threads"]


def ort_session_options(threads: int, spinning: bool = True) -> Any:
    """ONNX Runtime session options for timing and serving: `threads` intra-op threads, one inter-op
    thread, sequential execution, all graph optimisations, warnings silenced. `spinning=False` for
    several sessions called in turn (a cascade): idle threads must not spin on the cores the next needs.
    With spinning, the pool spins during a run but stops when it returns (session.force_spinning_stop):
    otherwise it kept spinning ~20 ms after each run here, on cores that the reference timed next to the
    model (deploy/latency.py measure_paired) or another worker needs; batch-1 latency alone unchanged
    (ResNet-8, 2 threads: 0.185 vs 0.184 ms)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if _GLOBAL_POOL:  # use_global_thread_pool() was called: ORT refuses per-session pools from then on
        so.use_per_session_threads = False
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    else:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (empty where /proc/cpuinfo is not readable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_vnni(flags: set[str] | None = None) -> bool:
    """True when the CPU has VNNI/AMX int8 dot products (8-bit products summed without saturation)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def resolve_int8_scheme(scheme: str = "auto", flags: set[str] | None = None) -> tuple[str, str]:
    """(scheme, reason): "auto" gives U8U8 on an x86 CPU without VNNI, else U8S8 (see INT8_SCHEMES)."""
    if scheme not in INT8_SCHEMES:
        raise ValueError(f"int8_scheme must be one of {INT8_SCHEMES}, got {scheme!r}")
    if scheme != "auto":
        return scheme, "set explicitly"
    flags = cpu_flags() if flags is None else flags
    if has_vnni(flags):
        return "u8s8", "CPU with VNNI"
    if "avx2" in flags or "avx512f" in flags or "sse4_1" in flags:
        return "u8u8", "x86 CPU without VNNI, where U8S8 saturates"
    return "u8s8", "not an x86 CPU" if flags else "CPU flags unknown"


def quantized_conv_share(onnx_path: str | Path) -> tuple[int, int]:
    """(quantized, total) Conv nodes of a QDQ model: a Conv is quantized when its weight is dequantized int8."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    return sum(len(n.input) > 1 and n.input[1] in dq_outputs for n in convs), len(convs)


def _torch_int8_fx(model: nn.Module, example: torch.Tensor, calib: list[torch.Tensor]) -> nn.Module:
    """Post-training static int8 with torch.ao FX on the x86 engine (eager int8 kernels)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapping = get_default_qconfig_mapping(engine)
        if engine == "x86" and has_vnni():  # 8-bit activations cannot overflow with VNNI kernels
            from torch.ao.quantization import QConfig
            from torch.ao.quantization.observer import HistogramObserver

            mapping.set_global(QConfig(activation=HistogramObserver.with_args(reduce_range=False),
                                       weight=mapping.global_qconfig.weight))
        try:
            prepared = prepare_fx(model, mapping, (example,))
            with torch.no_grad():
                for b in calib:
                    prepared(b)
            return convert_fx(prepared)
        except Exception as e:  # noqa: BLE001 - symbolic tracing fails in many ways
            name = type(model).__name__
            raise CompressionError(f"torch.ao FX int8 quantisation of {name} failed: {e}") from None


def _pt2e_api() -> tuple[Any, Any, Any] | None:
    """(prepare_pt2e, convert_pt2e, X86InductorQuantizer module) from torchao or torch.ao, or None."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq  # type: ignore
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # type: ignore
    except ImportError:
        try:
            import torch.ao.quantization.quantizer.x86_inductor_quantizer as xiq  # type: ignore
            from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e  # type: ignore
        except ImportError:
            return None
    return prepare_pt2e, convert_pt2e, xiq


def _torch_int8_pt2e(
    model: nn.Module, example: torch.Tensor, calib: list[torch.Tensor], api: tuple
) -> nn.Module:
    """int8 through PT2E + X86InductorQuantizer; it only runs int8 kernels once torch.compile'd."""
    prepare_pt2e, convert_pt2e, xiq = api
    try:
        batch = torch.export.Dim("batch")
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for b in calib:
                prepared(b)
        return convert_pt2e(prepared)
    except Exception as e:  # noqa: BLE001
        raise CompressionError(f"PT2E int8 quantisation of {type(model).__name__} failed: {e}") from None


def _build_torch(model: nn.Module, example: torch.Tensor, backend: str, precision: str,
                 calib: list[torch.Tensor], dev: torch.device, threads: int, workdir: Path) -> Deployed:
    cuda = dev.type == "cuda"
    dtype = torch.float32
    real = precision
    compile_it = backend == "torch_compile"
    if precision == "int8":
        api = _pt2e_api() if compile_it else None
        if cuda:
            real = "fp32 (int8 unsupported on torch cuda)"
        elif api is not None:
            model = _torch_int8_pt2e(model, example, calib, api)
            real = "int8 (PT2E X86InductorQuantizer, compiled)"
        else:
            model = _torch_int8_fx(model, example, calib)
            real = f"int8 (torch.ao FX PTQ, {torch.backends.quantized.engine} engine)"
            if compile_it:  # torch.compile of FX-quantised modules is not a supported path
                compile_it = False
                real += ", eager: PT2E unavailable"
    elif precision in ("fp16", "bf16"):
        if cuda:
            dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        else:
            dtype = torch.bfloat16
            try:
                with torch.inference_mode():
                    copy.deepcopy(model).to(dtype)(example[:1].to(dtype))
                real = "bf16" if precision == "bf16" else "bf16 (fp16 unsupported on cpu)"
            except Exception:  # noqa: BLE001 - missing bf16 kernels
                dtype = torch.float32
                real = f"fp32 ({precision} unsupported on cpu)"
        model = model.to(dtype)
    model = model.to(dev)
    size_model = model
    size = serialized_size(size_model)
    path: str | None = None
    if workdir is not None:
        p = workdir / "model.pt"
        torch.save(size_model.state_dict(), p)
        path = str(p)
    runner: Callable[[Any], Any] = model
    if compile_it:
        runner = torch.compile(model)
    provider = f"torch {'inductor' if compile_it else 'eager'} {dev.type}"

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.detach().to(dev, dtype)

    if compile_it:  # compile now (for the example's batch) rather than inside a timed warm-up
        with torch.inference_mode():
            runner(prepare(example))
    return Deployed(
        backend=backend, precision=real, runtime_version=f"torch {torch.__version__}", provider=provider,
        size_bytes=size, path=path, device=str(dev), threads=threads,
        _call=runner, _prepare=prepare, _to_tensor=lambda t: t,
    )


def serialized_size(obj: Any) -> int:
    """Bytes of a model's shipped form: a file path, raw bytes, an onnx.ModelProto, or an nn.Module.

    An nn.Module is measured as its torch.save'd state dict (what model.pt holds).
    """
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.is_file():
            raise ValueError(f"serialized_size: no such file {path}")
        return path.stat().st_size
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, nn.Module):
        buf = io.BytesIO()
        torch.save(obj.state_dict(), buf)
        return buf.getbuffer().nbytes
    if hasattr(obj, "SerializeToString"):  # onnx.ModelProto without importing onnx here
        return len(obj.SerializeToString())
    raise ValueError(f"serialized_size: cannot size an object of type {type(obj).__name__}")
