"""The ONNX Runtime backend: ONNX export, static int8 QDQ quantisation, sessions and their thread pools."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgecompress.errors import CompressionError, EdgeCompressError
from edgecompress.runtime.cpu_features import resolve_int8_scheme
from edgecompress.runtime.deployed import Deployed, serialized_size

ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


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


_PASS_THROUGH = {"Flatten", "Reshape", "Identity", "Squeeze", "Cast", "Add"}


def classifier_node(path: Path) -> str | None:
    """The name of the Gemm/MatMul/Conv node whose output the graph returns (through reshapes and a bias
    Add): the classifier, kept in fp32 by int8 quantisation. Quantising the logits to 8 bits turns near-ties
    into ties: a ResNet-18 on Fashion-MNIST agreed with fp32 on 88.3% of images, 97.0% with it kept fp32."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    made_by = {out: node for node in graph.node for out in node.output}
    constants = {i.name for i in graph.initializer}
    name = graph.output[0].name
    while name in made_by:
        node = made_by[name]
        if node.op_type in ("Gemm", "MatMul", "Conv"):
            return node.name
        inputs = [i for i in node.input if i and i not in constants and i in made_by]
        if node.op_type not in _PASS_THROUGH or len(inputs) != 1:
            return None
        name = inputs[0]
    return None


def build_ort(model: nn.Module, example: torch.Tensor, precision: str, calib: list[torch.Tensor],
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
            keep_fp32 = [n for n in [classifier_node(pre)] if n]
            quantize_static(str(pre), str(qpath), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QUInt8 if scheme == "u8u8" else QuantType.QInt8,
                            reduce_range=scheme == "u8s8_rr", nodes_to_exclude=keep_fp32)
        except Exception as e:  # noqa: BLE001
            name = type(model).__name__
            raise CompressionError(f"onnxruntime int8 quantisation of {name} failed: {e}") from None
        pre.unlink(missing_ok=True)
        path = qpath
        label = "U8S8, 7-bit weights" if scheme == "u8s8_rr" else scheme.upper()
        fp32_head = ", classifier fp32" if keep_fp32 else ""
        real = f"int8 (onnxruntime static QDQ, per-channel weights, {label}{fp32_head}: {why})"

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
    model (runtime/latency_paired.py measure_paired) or another worker needs; batch-1 latency alone unchanged
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


def quantized_conv_share(onnx_path: str | Path) -> tuple[int, int]:
    """(quantized, total) Conv nodes of a QDQ model: a Conv is quantized when its weight is dequantized int8."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    return sum(len(n.input) > 1 and n.input[1] in dq_outputs for n in convs), len(convs)
