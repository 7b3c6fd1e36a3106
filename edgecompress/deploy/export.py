"""Export one trial of a study: config.yaml to reproduce it, TorchScript and ONNX (fp32, int8 QDQ) models.

config.yaml states the dataset loader's preprocessing (its `Preprocess`) in words and as data, and the export
checks that statement: the stated steps, run with PIL + numpy on the dataset's raw files (not the loader's
tensors), must give the model the loader's input. With `preprocess`, the ONNX files are also written with the
preprocessing in the graph (uint8 N x H x W x C images in), checked against the torch pipeline.

Nothing is written under the final name until every exported model has been reloaded, compared with the
in-memory model on a validation batch (top-1 agreement, max logit difference) and re-timed on this
device: the files are built in a temp folder next to the output folder, which then replaces it
(os.replace), so an interrupted export leaves no half-written file under the final name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import yaml

import edgecompress
from edgecompress.deploy.latency import device_name, measure_latency
from edgecompress.deploy.preprocess import Preprocess, with_preprocessing
from edgecompress.deploy.runtime import (
    deploy,
    estimate_latency,
    export_onnx,
    ort_session_options,
    resolve_int8_scheme,
)
from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.compress import load_compressed, weights_hash
from edgecompress.evaluators.data import DataBundle, calibration_batches, load_data
from edgecompress.evaluators.dic import load_dic_pipeline
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.results.gains import front_gains
from edgecompress.results.pareto import Selection, knee_point, select
from edgecompress.spaces.config import CompressionConfig
from edgecompress.spaces.experiment import ExperimentConfig
from edgecompress.study import artefact_store
from edgecompress.study import attrs as A
from edgecompress.study.attrs import study_experiment
from edgecompress.study.frame import study_to_frame
from edgecompress.study.front import front
from edgecompress.study.storage import load_study
from edgecompress.utils import plain, read_format_yaml, replace_dir

FORMAT = "edgecompress.export"
FORMAT_VERSION = 2  # 2: input.preprocess is the loader's steps (words + data), not one line
READABLE_VERSIONS = (1, 2)
FORMATS = ("yaml", "torchscript", "onnx")
FILES = {"config": "config.yaml", "torchscript": "model.torchscript.pt", "onnx": "model.onnx",
         "onnx_int8": "model_int8.onnx", "onnx_preprocess": "model_preprocess.onnx",
         "onnx_int8_preprocess": "model_int8_preprocess.onnx"}
FP32_MIN_AGREEMENT = 0.99  # fp32 exports must give the same top-1 as the in-memory model
CHECK_SAMPLES = 256  # validation images used to compare an exported model with the in-memory one
RAW_CHECK_SAMPLES = 1000  # validation images the stated preprocessing is checked on (from the raw files)
MAX_INPUT_DIFF = 1e-3  # stated preprocessing vs the loader's tensor, after normalisation
PREPROCESS_LAYOUT = "NHWC"  # the uint8 input of the files with the preprocessing in the graph
_METRIC_TYPES = (int, float, str, bool)


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


def check_device(device: str) -> None:
    """`device` is cpu or cuda, and CUDA is there when asked (one-line error otherwise)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgeCompressError(f"--device cuda: CUDA is not available on this machine (torch {torch.__version__})")


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """'yaml,torchscript,onnx' (or a list) -> validated tuple; config.yaml is always written."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = []
    for f in (str(x).strip().lower() for x in items):
        if not f:
            continue
        if f not in FORMATS:
            raise ValueError(f"--format: unknown format {f!r} (choose from {', '.join(FORMATS)})")
        if f not in out:
            out.append(f)
    if not out:
        raise ValueError(f"--format: no format given (choose from {', '.join(FORMATS)})")
    return tuple(out)


def choose_trial(df: Any, trial: int | None = None, max_latency: float | None = None,
                 min_accuracy: float | None = None, knee: bool = False, deployable: bool = False) -> Selection:
    """The trial to export: `trial` N, the knee of the front, or `select` over the front by the budgets.

    With `trial` or `knee`, budgets are checked against the chosen point (not used to choose). `deployable`:
    the front of the trials whose latency was measured (never an estimated one; `trial` N must be one).
    """
    if trial is not None and knee:
        raise ValueError("export: give either --trial or --knee, not both")
    if trial is None and not knee and max_latency is None and min_accuracy is None:
        raise ValueError("export: choose a trial with --trial N, --max-latency X, --min-accuracy Y or --knee")
    if trial is not None:
        rows = df[df["number"] == trial]
        if not len(rows):
            raise EdgeCompressError(f"export: study {df.attrs.get('study_name')!r} has no trial {trial}")
        row = rows.iloc[0]
        if row["state"] != "COMPLETE":
            why = row.get("fail_reason") or row.get("state_detail")
            raise EdgeCompressError(f"export: trial {trial} is {row['state']} ({why}); only complete trials export")
        if deployable and row.get(A.LATENCY_SOURCE) == "estimated":
            raise ValueError(f"export --deployable: trial {trial}'s latency is estimated (no kernels here), not "
                             "measured; drop --deployable to export it anyway")
        one = rows.copy()
        one.attrs = dict(df.attrs)
        sel = select(one, max_latency=max_latency, min_accuracy=min_accuracy)
        return Selection(sel.number, sel.feasible, sel.row, sel.violations,
                         f"trial {trial}" + ("" if sel.feasible else f": {sel.reason}"))
    rows = front(df, deployable=deployable)
    if rows.empty:
        what = "deployable (measured-latency) " if deployable else ""
        raise EdgeCompressError(f"export: study {df.attrs.get('study_name')!r} has no complete {what}trial")
    if knee:
        sel = knee_point(rows)
        if max_latency is None and min_accuracy is None:
            return sel
        one = rows[rows["number"] == sel.number]
        chk = select(one, max_latency=max_latency, min_accuracy=min_accuracy)
        return Selection(sel.number, chk.feasible, sel.row, chk.violations,
                         sel.reason + ("" if chk.feasible else f"; {chk.reason}"))
    return select(rows, max_latency=max_latency, min_accuracy=min_accuracy)


def trial_model_path(row: Any, number: int | None) -> Path:
    """model.pt of a trial's artefacts, or a one-line error saying why there is none."""
    folder = row.get("artefact_dir") if hasattr(row, "get") else None
    if not isinstance(folder, str) or not folder:
        raise EdgeCompressError(f"trial {number} has no artefact_dir: nothing to export")
    local = artefact_store.local_folder(row)  # not readable here: fetched from the artefact store's upload
    path = (local or Path(folder)) / ARTEFACT_FILES["model"]
    if not path.is_file():
        raise EdgeCompressError(f"trial {number}: no saved model at {path} (stopped before fine-tuning, "
                                "or its artefacts were moved)")
    return path


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


def _check_torchscript(path: Path, ref: np.ndarray, xval: torch.Tensor, exp: ExperimentConfig,
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


def _check_onnx(path: Path, ref: np.ndarray, xval: torch.Tensor, exp: ExperimentConfig,
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


def _check_onnx_raw(path: Path, ref: np.ndarray, images: list[np.ndarray], exp: ExperimentConfig,
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


def _build_files(model: nn.Module, formats: tuple[str, ...], staging: Path, size: int, in_chans: int,
                 cfg: CompressionConfig, calib: list[torch.Tensor] | None,
                 int8_scheme: str = "auto", preprocess: Preprocess | None = None) -> list[tuple[str, str]]:
    """Write the model files into `staging`; returns [(check name, precision)]. With `preprocess`, each ONNX file
    also gets a copy with the preprocessing in its graph (uint8 images in)."""
    example = torch.randn(2, in_chans, size, size)
    built: list[tuple[str, str]] = []
    if "torchscript" in formats:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(staging / FILES["torchscript"]))
        built.append(("torchscript", "fp32"))
    if "onnx" in formats:
        export_onnx(model, example, staging / FILES["onnx"])
        built.append(("onnx", "fp32"))
        if cfg.w_bits <= 8 and calib is not None:  # int8 deploy form: onnxruntime static QDQ, as the search
            work = staging / ".int8"
            dep = deploy(model, example[:1], backend="onnxruntime", precision="int8", calib_batches=calib,
                         workdir=work, int8_scheme=int8_scheme)
            os.replace(work / "model_int8.onnx", staging / FILES["onnx_int8"])
            shutil.rmtree(work, ignore_errors=True)
            built.append(("onnx_int8", dep.precision))
    if preprocess is not None:
        import onnx

        for name, precision in [b for b in built if b[0] in ("onnx", "onnx_int8")]:
            merged = with_preprocessing(staging / FILES[name], preprocess, size, layout=PREPROCESS_LAYOUT)
            onnx.save(merged, str(staging / FILES[f"{name}_preprocess"]))
            built.append((f"{name}_preprocess", precision))
    return built


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the runtimes an exported model was built and checked with."""
    out = {"edgecompress": edgecompress.__version__, "torch": torch.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    for mod in ("onnxruntime", "onnx"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    return out


def preprocessed_input(spec: Preprocess, size: int, files: list[str]) -> dict[str, Any]:
    """config.yaml's description of the files with the preprocessing in the graph."""
    c = spec.channels
    decode = (f"decode with PIL: np.asarray(Image.open(file).convert({spec.pil_mode!r}))" if spec.pil_mode
              else f"the stored uint8 pixels ({spec.stored})")
    return {
        "files": files, "input_name": "images", "dtype": "uint8", "layout": PREPROCESS_LAYOUT,
        "shape": ["N", "H", "W", c], "output": "logits",
        "words": f"uint8 images N x H x W x {c} ({decode}; all images of one batch the same H x W); the graph runs "
                 f"the steps after decoding (ONNX Resize with antialias, opset >= 18) and the model",
    }


def export_config(result: ExportResult, exp: ExperimentConfig, data: DataBundle, row: dict[str, Any],
                  size: int, device: str, threads: int, staging: Path,
                  spec: Preprocess | None = None) -> dict[str, Any]:
    """The config.yaml content: everything needed to reproduce and to use the exported model."""
    metric_keys = [k for k, v in row.items() if isinstance(v, _METRIC_TYPES) and not k.startswith(
        ("params_", "cfg_", "violation_", "datetime"))]
    metrics = {k: plain(row[k]) for k in sorted(metric_keys)}
    files = {}
    for name in result.files:
        p = staging / name
        files[name] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    spec = spec or data.preprocess
    if spec is None:
        raise ExportError(f"dataset {data.name!r}: its loader states no preprocessing (RawData.preprocess)")
    pre_files = [f for f in result.files if f.endswith("_preprocess.onnx")]
    inp: dict[str, Any] = {"size": size, "channels": data.in_chans, "layout": "NCHW", "dtype": "float32",
                           "preprocess": spec.describe(size), "mean": plain(list(spec.mean)),
                           "std": plain(list(spec.std)), "classes": list(data.classes)}
    if pre_files:
        inp["preprocessed_onnx"] = preprocessed_input(spec, size, pre_files)
    pc = result.preprocess_check
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "study": result.study,
        "trial": result.number,
        "selection": {"reason": result.selection.reason, "feasible": result.selection.feasible,
                      "violations": plain(result.selection.violations)},
        "compression": result.config.to_dict(),
        "config_hash": result.config.config_hash(),
        "weights_sha256": result.weights_sha256,
        "fidelity": result.fidelity,
        "gains_vs_uncompressed": dict(result.gains) or None,
        "base_model": {"key": exp.base_key(), "model": exp.model.name, "dataset": exp.dataset.name},
        "seed": exp.seed,
        "input": inp,
        "metrics": metrics,
        "device": {"export_device": device, "export_device_name": device_name(device), "threads": threads,
                   "search_device": metrics.get("device"), "search_device_name": metrics.get("device_name"),
                   "search_backend": metrics.get("backend")},
        "versions": versions(),
        "files": files,
        "checks": [plain(asdict(c)) for c in result.checks],
        "preprocess_check": plain(asdict(pc)) if pc is not None else None,
        "budget": {"max_latency_ms": result.max_latency_ms, "latency_check": result.latency_check},
        "problems": list(result.problems),
        "notes": precision_notes(result.config) + list(result.notes),
        "experiment": exp.to_dict(),
    }


def precision_notes(cfg: CompressionConfig) -> list[str]:
    """What the exported files are, relative to the precision the trial was scored at."""
    w, a = cfg.w_bits, cfg.a_bits
    if w < 8:
        return [f"the trial's accuracy is the {w}/{a}-bit fake-quantised model's; no runtime has {w}-bit kernels, "
                "so the files are fp32 and int8 (QDQ) and the int8 latency is scaled by the BitOPs ratio"]
    if w == 16:
        return ["16-bit trial: the files are fp32 (cast to fp16/bf16 at load time where the device supports it)"]
    return []


def load_export_config(path: str | os.PathLike[str]) -> tuple[CompressionConfig, dict[str, Any]]:
    """Read an export's config.yaml (a file or its folder) -> (CompressionConfig, the whole document)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILES["config"]
    doc = read_format_yaml(path, FORMAT, READABLE_VERSIONS, "export config")
    return CompressionConfig.from_dict(doc["compression"], str(path)), doc


def export_trial(study: Any, out_dir: str | os.PathLike[str], *, trial: int | None = None,
                 max_latency: float | None = None, min_accuracy: float | None = None, knee: bool = False,
                 formats: str | Sequence[str] = FORMATS, force: bool = False, data: DataBundle | None = None,
                 device: str = "cpu", threads: int | None = None, storage: Any = None,
                 int8_scheme: str = "auto", preprocess: bool = False, final: str = "auto",
                 deployable: bool = False) -> ExportResult:
    """Choose a trial, export it to `out_dir`, check every file; raise ExportError when a check fails.

    `int8_scheme` picks the int8 file's scheme for the target CPU: "auto" for this one, "u8s8" for a CPU
    with VNNI (or ARM), "u8u8" for an x86 CPU without VNNI (see deploy.INT8_SCHEMES).
    `max_latency` is in ms. With `force`, an infeasible choice or a failed check is recorded in
    `result.problems` and the export is still written. `data` skips reloading the study's dataset.
    `preprocess` (needs the onnx format) also writes each ONNX file with the dataset's preprocessing in its graph
    (model_preprocess.onnx, model_int8_preprocess.onnx: uint8 N x H x W x C images in).
    `deployable` chooses on the front of measured-latency trials (see `choose_trial`); the result carries the
    chosen trial's gains against the study's uncompressed trial (results.gains), written to config.yaml too.
    """
    fmts = parse_formats(formats)
    if preprocess and "onnx" not in fmts:
        raise ValueError("--preprocess puts the preprocessing in the ONNX graph: it needs --format onnx")
    check_device(device)
    resolve_int8_scheme(int8_scheme)  # a bad value fails before any work
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                     and not (out_dir / FILES["config"]).is_file())):
        raise ExportError(f"refusing to overwrite {out_dir}: it exists and is not an export folder")
    st = load_study(study, storage, final=final)
    df = study_to_frame(st)
    sel = choose_trial(df, trial, max_latency, min_accuracy, knee, deployable)
    problems: list[str] = []
    if not sel.feasible:
        if not force:
            raise ExportError(f"{sel.reason} (pass --force to export it anyway)")
        problems.append(sel.reason)
    exp = study_experiment(st)
    path = trial_model_path(sel.row, sel.number)
    model, meta = load_compressed(path)
    cfg = CompressionConfig.from_dict(meta.get("config") or sel.row["config"], str(path))
    data = data if data is not None else load_data(exp.dataset, exp.seed)
    spec = data.preprocess
    if spec is None:
        raise ExportError(f"dataset {data.name!r}: its loader states no preprocessing (RawData.preprocess), so the "
                          "export could not say how to feed the model")
    size = int(meta.get("input_size") or cfg.input_size(data.native_size))
    threads = threads or exp.device.threads
    result = ExportResult(out_dir, st.study_name, int(sel.number), sel, cfg, forced=force,
                          max_latency_ms=max_latency, problems=problems, notes=list(data.notes),
                          weights_sha256=weights_hash(model),
                          fidelity=str(st.user_attrs.get(A.FIDELITY, A.DEFAULT_FIDELITY)),
                          gains=_gains(df, int(sel.number)))
    recorded = sel.row.get(A.WEIGHTS_HASH)
    if isinstance(recorded, str) and recorded != result.weights_sha256:
        raise ExportError(f"trial {sel.number}: {path} does not hold the weights the trial recorded "
                          f"({A.WEIGHTS_HASH} {recorded[:12]}..., file {result.weights_sha256[:12]}...)")
    if cfg.crop == "dic":  # one graph from the raw canvas: box net -> crop -> the classifier at `size`
        model = load_dic_pipeline(path.parent, model, data.native_size, size)
        result.notes.append(f"crop: dic: the files take the whole {data.native_size} px image; in the graph a "
                            f"box predictor finds the object and its crop is resized to {size} px for the classifier")
        size = data.native_size
    xval = validation_batch(data, size)
    raw = [spec.decode(it) for it in raw_items(data.val, len(xval))] if preprocess else []
    with torch.no_grad():
        ref = model(xval).float().numpy()
    calib = calibration_batches(data.train, size, exp.seed) if cfg.w_bits <= 8 and "onnx" in fmts else None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        built = _build_files(model, fmts, staging, size, data.in_chans, cfg, calib, int8_scheme,
                             spec if preprocess else None)
        for name, precision in built:
            file = FILES[name]
            if name.endswith("_preprocess"):
                agree, diff, (lat, p90, lat_b) = _check_onnx_raw(staging / file, ref, raw, exp, device, threads)
            else:
                check = _check_torchscript if name == "torchscript" else _check_onnx
                agree, diff, (lat, p90, lat_b) = check(staging / file, ref, xval, exp, device, threads)
            source, note = "measured", ""
            if name.endswith("_preprocess"):
                h, w = raw[0].shape[:2]
                note = (f"fed decoded uint8 images, compared with the in-memory model on the loader's tensors; "
                        f"latency includes the preprocessing of a {h} x {w} image")
            if cfg.w_bits < 8 and name.startswith("onnx_int8"):
                lat, p90, lat_b = (estimate_latency(v, 8, cfg.w_bits, cfg.a_bits) for v in (lat, p90, lat_b))
                source = "estimated"
                note = "; ".join(x for x in (note, f"{cfg.w_bits}/{cfg.a_bits}-bit latency estimated from this int8 "
                                             "model x BitOPs ratio; the file itself is int8") if x)
            need = FP32_MIN_AGREEMENT if precision == "fp32" else None
            passed = need is None or agree >= need
            result.checks.append(ModelCheck(name, file, precision, len(ref), agree, diff, need, lat, p90, lat_b,
                                            exp.device.batch_size, source, passed, note))
            if not passed:
                result.problems.append(f"{file}: top-1 agreement {agree:.4f} with the in-memory model is below "
                                       f"{need:.2f} (max logit diff {diff:.3g})")
            result.files.append(file)
        onnx_file = staging / FILES["onnx"] if "onnx" in fmts else None
        pc = check_stated_preprocess(model, data, spec, size, _study_accuracy(sel.row), onnx_file, threads=threads)
        if pc.samples < pc.validation_images or cfg.w_bits != 32:
            which = "" if pc.samples == pc.validation_images else f"the first {pc.samples} of "
            pc.note = (f"the study's accuracy is the {cfg.w_bits}/{cfg.a_bits}-bit shipped model's on all "
                       f"{pc.validation_images} validation images; the others are the fp32 model's on {which}them")
        result.preprocess_check = pc
        if not pc.passed:
            result.problems.append(
                f"the stated preprocessing does not reproduce the loader's input on {pc.samples} raw validation "
                f"images: max input difference {pc.max_input_diff:.3g}, top-1 agreement {pc.agreement:.4f}")
        _budget_check(result, exp, cfg)
        if result.problems and not force:
            raise ExportError(f"export of trial {result.number} failed its checks: {'; '.join(result.problems)} "
                              "(pass --force to write it anyway)", result)
        doc = export_config(result, exp, data, dict(sel.row), size, device, threads, staging, spec)
        with open(staging / FILES["config"], "w") as f:
            yaml.safe_dump(plain(doc), f, sort_keys=False)
        replace_dir(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    result.files.insert(0, FILES["config"])
    return result


def _gains(df: Any, number: int) -> dict[str, Any]:
    """results.gains of trial `number` against the study's base, as plain data ({} without a base)."""
    g, base = front_gains(df, df[df["number"] == number])
    if base is None or g.empty:
        return {}
    return {"base_trial": int(base["number"]), **plain(g.iloc[0].to_dict())}


def _study_accuracy(row: Any) -> float | None:
    v = row.get("accuracy") if hasattr(row, "get") else None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(f) else f


def _budget_check(result: ExportResult, exp: ExperimentConfig, cfg: CompressionConfig) -> None:
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
