"""The checks an export runs, and their record: every exported file reloaded, compared with the in-memory model on
a validation batch (top-1 agreement, max logit difference) and re-timed on this device; config.yaml's stated
preprocessing run with PIL + numpy on the dataset's raw files; the re-measured latency against the budget.
`ExportResult` collects them (and what was exported where); `ExportError` carries it when a check fails.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.data import DataBundle
from edgecompress.results.pareto import Selection
from edgecompress.runtime.backend_ort import ort_session_options
from edgecompress.runtime.latency import measure_latency
from edgecompress.runtime.preprocess import Preprocess
from edgecompress.spaces.config import CompressionConfig
from edgecompress.spaces.experiment import ExperimentConfig

FP32_MIN_AGREEMENT = 0.99  # fp32 exports must give the same top-1 as the in-memory model
CHECK_SAMPLES = 256  # validation images used to compare an exported model with the in-memory one
RAW_CHECK_SAMPLES = 1000  # validation images the stated preprocessing is checked on (from the raw files)
MAX_INPUT_DIFF = 1e-3  # stated preprocessing vs the loader's tensor, after normalisation


class ExportError(EdgeCompressError):
    """The export cannot proceed or did not pass its checks; `result` holds the checks when they ran."""

    def __init__(self, message: str, result: ExportResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class ModelCheck:
    """One exported file reloaded, compared with the in-memory model and re-timed on this device."""

    name: str  # torchscript | onnx | onnx_int8
    file: str
    precision: str
    samples: int
    agreement: float  # top-1 agreement with the in-memory fp32 model
    max_abs_diff: float  # max |logit difference|
    min_agreement: float | None  # None: informational (int8 is expected to differ a little)
    latency_ms: float  # median batch 1 (scaled by BitOPs for sub-8-bit trials, see latency_source)
    latency_p90_ms: float
    latency_batch_ms: float
    batch_size: int
    latency_source: str  # measured | estimated
    passed: bool
    note: str = ""


@dataclass
class PreprocessCheck:
    """config.yaml's stated preprocessing run with PIL + numpy on the raw files of validation images."""

    samples: int  # the first `samples` validation images (all of them when samples == validation images)
    validation_images: int
    size: int
    max_input_diff: float  # max |stated - loader's tensor| over all inputs (after normalisation)
    agreement: float  # top-1 agreement of the in-memory model on the stated inputs vs the loader's
    stated_accuracy: float  # the in-memory model on the stated inputs
    loader_accuracy: float  # the in-memory model on the loader's tensors (the study's pipeline), same images
    onnx_accuracy: float | None  # model.onnx on the stated inputs (None: no ONNX file exported)
    study_accuracy: float | None  # the trial's accuracy in the study (its shipped precision, all validation images)
    passed: bool
    note: str = ""


@dataclass
class ExportResult:
    """What was exported where, the checks, and whether the re-measured latency meets the budget."""

    out_dir: Path
    study: str
    number: int
    selection: Selection
    config: CompressionConfig
    files: list[str] = field(default_factory=list)
    checks: list[ModelCheck] = field(default_factory=list)
    latency_check: str | None = None  # the check whose latency is compared with the budget
    max_latency_ms: float | None = None
    problems: list[str] = field(default_factory=list)
    forced: bool = False
    preprocess_check: PreprocessCheck | None = None
    notes: list[str] = field(default_factory=list)
    weights_sha256: str = ""  # evaluators.compress.weights_hash of the exported model (= the trial's record)
    fidelity: str = "proxy"  # "final": a finalize study's trial (fully trained), "proxy": a search trial
    gains: dict[str, Any] = field(default_factory=dict)  # results.gains against the base, with "base_trial"

    @property
    def ok(self) -> bool:
        return not self.problems


def validation_batch(data: DataBundle, size: int, n: int = CHECK_SAMPLES) -> torch.Tensor:
    """The first `n` validation images at `size` (normalised NCHW float)."""
    n = min(n, len(data.val))
    return data.val.batch(torch.arange(n), size)


def ort_session(path: str | os.PathLike[str], device: str = "cpu", threads: int = 2) -> Any:
    """A fresh ONNX Runtime session on a file (CUDA provider first when device is cuda)."""
    import onnxruntime as ort

    so = ort_session_options(threads)
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)


def compare_logits(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, max |difference|) of two logit arrays of the same shape."""
    if ref.shape != out.shape:
        raise EdgeCompressError(f"exported model gives logits of shape {out.shape}, expected {ref.shape}")
    agree = float((ref.argmax(1) == out.argmax(1)).mean()) if len(ref) else 1.0
    return agree, float(np.max(np.abs(ref - out))) if ref.size else 0.0


def _timing(fn_for: Any, exp: ExperimentConfig, device: str, threads: int, backend: str,
            runtime: str, in_shape: tuple[int, ...]) -> tuple[float, float, float]:
    """(batch-1 median, batch-1 p90, serving-batch median) in ms; fn_for(x) -> zero-arg callable."""
    d = exp.device
    kw = dict(device=device, threads=threads, backend=backend, runtime_version=runtime,
              min_repeats=d.min_repeats, max_seconds=d.max_seconds, target_cv=d.target_cv,
              clock="host" if backend == "onnxruntime" else "auto")
    x1 = torch.randn(1, *in_shape[1:])
    xb = torch.randn(d.batch_size, *in_shape[1:])
    s1 = measure_latency(fn_for(x1), batch_size=1, **kw)
    sb = measure_latency(fn_for(xb), batch_size=d.batch_size, **kw)
    return s1.median_ms, s1.p90_ms, sb.median_ms


def check_torchscript(path: Path, ref: np.ndarray, xval: torch.Tensor, exp: ExperimentConfig,
                       device: str, threads: int) -> tuple[float, float, tuple[float, float, float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the portable format
        loaded = torch.jit.load(str(path), map_location=device).eval()
    with torch.no_grad():
        out = loaded(xval.to(device)).float().cpu().numpy()
    agree, diff = compare_logits(ref, out)

    def fn_for(x: torch.Tensor) -> Any:
        xd = x.to(device)
        return lambda: loaded(xd)

    return agree, diff, _timing(fn_for, exp, device, threads, "torch", f"torch {torch.__version__}",
                                tuple(xval.shape))


def check_onnx(path: Path, ref: np.ndarray, xval: torch.Tensor, exp: ExperimentConfig,
                device: str, threads: int) -> tuple[float, float, tuple[float, float, float]]:
    import onnxruntime as ort

    sess = ort_session(path, device, threads)
    name = sess.get_inputs()[0].name
    out = np.asarray(sess.run(None, {name: xval.numpy()})[0], dtype=np.float32)
    agree, diff = compare_logits(ref, out)

    def fn_for(x: torch.Tensor) -> Any:
        feed = {name: x.numpy()}
        return lambda: sess.run(None, feed)

    return agree, diff, _timing(fn_for, exp, device, threads, "onnxruntime", f"onnxruntime {ort.__version__}",
                                tuple(xval.shape))


def raw_items(split: Any, n: int) -> list[Any]:
    """The first `n` images of `split` as the dataset stores them: file paths (folders) or uint8 H x W x C arrays
    (datasets read into memory), not the loader's tensors."""
    if hasattr(split, "files"):
        return list(split.files[:n])
    if hasattr(split, "images"):
        return [im.permute(1, 2, 0).numpy() for im in split.images[:n]]
    raise EdgeCompressError(f"cannot read the stored images of a {type(split).__name__} to check the preprocessing")


def check_stated_preprocess(model: nn.Module, data: DataBundle, spec: Preprocess, size: int,
                            study_accuracy: float | None = None, onnx_path: Path | None = None,
                            n: int = RAW_CHECK_SAMPLES, threads: int = 2, chunk: int = 128) -> PreprocessCheck:
    """Run `spec`'s stated steps (PIL + numpy, `Preprocess.apply`) on the raw files of the first `n` validation
    images and compare with the loader's tensors: input difference, the in-memory model's top-1 agreement and
    accuracy on both, and `onnx_path`'s accuracy on the stated inputs."""
    n = min(n, len(data.val))
    items, labels = raw_items(data.val, n), data.val.labels[:n].numpy()
    sess = ort_session(onnx_path, "cpu", threads) if onnx_path is not None else None
    diff, stated_pred, loader_pred, onnx_pred = 0.0, [], [], []
    for start in range(0, n, chunk):
        stated = np.stack([spec.apply(it, size) for it in items[start: start + chunk]])
        loader = data.val.batch(torch.arange(start, min(n, start + chunk)), size)
        diff = max(diff, float(np.abs(stated - loader.numpy()).max()))
        with torch.no_grad():
            stated_pred.append(model(torch.from_numpy(stated)).argmax(1).numpy())
            loader_pred.append(model(loader).argmax(1).numpy())
        if sess is not None:
            out = sess.run(None, {sess.get_inputs()[0].name: stated})[0]
            onnx_pred.append(np.asarray(out).argmax(1))
    sp, lp = np.concatenate(stated_pred), np.concatenate(loader_pred)
    agreement = float((sp == lp).mean())
    return PreprocessCheck(
        samples=n, validation_images=len(data.val), size=size, max_input_diff=diff, agreement=agreement,
        stated_accuracy=float((sp == labels).mean()), loader_accuracy=float((lp == labels).mean()),
        onnx_accuracy=float((np.concatenate(onnx_pred) == labels).mean()) if onnx_pred else None,
        study_accuracy=study_accuracy, passed=agreement >= FP32_MIN_AGREEMENT and diff <= MAX_INPUT_DIFF,
    )


def check_onnx_raw(path: Path, ref: np.ndarray, images: list[np.ndarray], exp: ExperimentConfig,
                    device: str, threads: int) -> tuple[float, float, tuple[float, float, float]]:
    """A file with the preprocessing in its graph, fed the decoded uint8 images (N x H x W x C, one batch per
    image size) of the images `ref` (the in-memory model on the loader's tensors) was computed on."""
    import onnxruntime as ort

    sess = ort_session(path, device, threads)
    name = sess.get_inputs()[0].name
    out = np.zeros_like(ref)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(im.shape, []).append(i)
    for idx in by_shape.values():
        out[idx] = np.asarray(sess.run(None, {name: np.stack([images[i] for i in idx])})[0], dtype=np.float32)
    agree, diff = compare_logits(ref, out)
    d = exp.device
    kw = dict(device=device, threads=threads, backend="onnxruntime", runtime_version=f"onnxruntime {ort.__version__}",
              min_repeats=d.min_repeats, max_seconds=d.max_seconds, target_cv=d.target_cv, clock="host")
    feeds = [{name: np.stack([images[0]] * b)} for b in (1, d.batch_size)]
    s1 = measure_latency(lambda: sess.run(None, feeds[0]), batch_size=1, **kw)
    sb = measure_latency(lambda: sess.run(None, feeds[1]), batch_size=d.batch_size, **kw)
    return agree, diff, (s1.median_ms, s1.p90_ms, sb.median_ms)


def budget_check(result: ExportResult, exp: ExperimentConfig, cfg: CompressionConfig) -> None:
    """Compare the latency of the file matching the search's deploy form with the requested budget."""
    by_name = {c.name: c for c in result.checks}
    if exp.device.backend == "onnxruntime":
        order = ["onnx_int8", "onnx", "torchscript"] if cfg.w_bits <= 8 else ["onnx", "torchscript"]
    else:
        order = ["torchscript", "onnx", "onnx_int8"]
    main = next((by_name[n] for n in order if n in by_name), None)
    result.latency_check = main.name if main else None
    if main is not None and result.max_latency_ms is not None and main.latency_ms > result.max_latency_ms:
        result.problems.append(
            f"re-measured latency of {main.file} on this device is {main.latency_ms:.4g} ms "
            f"({main.latency_source}), over the budget of {result.max_latency_ms:g} ms")
