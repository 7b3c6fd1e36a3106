"""The torch backends (eager, torch.compile): fp16/bf16 casts and int8 through PT2E or torch.ao FX PTQ."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress.errors import CompressionError
from edgecompress.runtime.cpu_features import has_vnni
from edgecompress.runtime.deployed import Deployed, serialized_size


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


def build_torch(model: nn.Module, example: torch.Tensor, backend: str, precision: str,
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
