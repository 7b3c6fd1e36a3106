"""Export one trial of a study: config.yaml to reproduce it, TorchScript and ONNX (fp32, int8 QDQ) models.

config.yaml states the dataset loader's preprocessing (its `Preprocess`) in words and as data, and the export
checks that statement: the stated steps, run with PIL + numpy on the dataset's raw files (not the loader's
tensors), must give the model the loader's input. With `preprocess`, the ONNX files are also written with the
preprocessing in the graph (uint8 N x H x W x C images in), checked against the torch pipeline.
This module runs the export; the trial is chosen in export_choice, the files are checked in export_check and
config.yaml is written (and read back) in export_config.

Nothing is written under the final name until every exported model has been reloaded, compared with the
in-memory model on a validation batch (top-1 agreement, max logit difference) and re-timed on this
device: the files are built in a temp folder next to the output folder, which then replaces it
(os.replace), so an interrupted export leaves no half-written file under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import yaml

from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.evaluators.compress import load_compressed, weights_hash
from edgecompress.evaluators.data import DataBundle, load_data
from edgecompress.evaluators.served import ServedTrial
from edgecompress.export.checks import (
    FP32_MIN_AGREEMENT,
    ExportError,
    ExportResult,
    ModelCheck,
    budget_check,
    check_onnx,
    check_onnx_raw,
    check_stated_preprocess,
    check_torchscript,
    raw_items,
    validation_batch,
)
from edgecompress.export.choice import choose_trial, trial_model_path
from edgecompress.export.config_file import FILES, PREPROCESS_LAYOUT, export_config
from edgecompress.results.gains import front_gains
from edgecompress.runtime.backend import deploy
from edgecompress.runtime.backend_ort import export_onnx
from edgecompress.runtime.cpu_features import resolve_int8_scheme
from edgecompress.runtime.preprocess import Preprocess, with_preprocessing
from edgecompress.runtime.sub8bit import estimate_latency
from edgecompress.spaces.config import CompressionConfig
from edgecompress.study import attrs as A
from edgecompress.study.attrs import study_experiment
from edgecompress.study.frame import study_to_frame
from edgecompress.study.storage import load_study
from edgecompress.utils import plain, replace_dir

FORMATS = ("yaml", "torchscript", "onnx")


def check_device(device: str) -> None:
    """`device` is cpu or cuda, and CUDA is there when asked (one-line error otherwise)."""
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"`device`: expected 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgeCompressError(f"`device` cuda: CUDA is not available on this machine (torch {torch.__version__})")


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """'yaml,torchscript,onnx' (or a list) -> validated tuple; config.yaml is always written."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = []
    for f in (str(x).strip().lower() for x in items):
        if not f:
            continue
        if f not in FORMATS:
            raise ConfigError(f"`formats`: unknown format {f!r} (choose from {', '.join(FORMATS)})")
        if f not in out:
            out.append(f)
    if not out:
        raise ConfigError(f"`formats`: no format given (choose from {', '.join(FORMATS)})")
    return tuple(out)


def _build_files(model: nn.Module, formats: tuple[str, ...], staging: Path, size: int, in_chans: int,
                 cfg: CompressionConfig, calib: list[torch.Tensor] | None,
                 int8_scheme: str = "auto", preprocess: Preprocess | None = None,
                 exporter: str = "legacy") -> list[tuple[str, str]]:
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
        export_onnx(model, example, staging / FILES["onnx"], exporter)
        built.append(("onnx", "fp32"))
        if cfg.w_bits <= 8 and calib is not None:  # int8 deploy form: onnxruntime static QDQ, as the search
            work = staging / ".int8"
            dep = deploy(model, example[:1], backend="onnxruntime", precision="int8", calib_batches=calib,
                         workdir=work, int8_scheme=int8_scheme, exporter=exporter)
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
        raise ConfigError("`preprocess` puts the preprocessing in the ONNX graph: it needs the onnx format in "
                          "`formats`")
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
            raise ExportError(f"{sel.reason} (pass `force` to export it anyway)")
        problems.append(sel.reason)
    exp = study_experiment(st)
    path = trial_model_path(sel.row, sel.number)
    model, meta = load_compressed(path)
    cfg = CompressionConfig.from_dict(meta.get("config") or sel.row[A.CONFIG], str(path))
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
    # what the search measured (evaluators/served.py): crop: dic and, where the space searches crop, crop: none
    # too, take the whole canvas (box net -> crop, or resize) in one graph
    served = ServedTrial.load(path.parent, exp, data, config=cfg, classifier=model, size=size)
    if cfg.crop == "dic":
        result.notes.append(f"crop: dic: the files take the whole {data.native_size} px image; in the graph a "
                            f"box predictor finds the object and its crop is resized to {size} px for the classifier")
    elif served.module is not model:
        result.notes.append(f"the files take the whole {data.native_size} px image and resize it to {size} px in "
                            f"the graph, as the search measured them")
    model, size = served.module, served.input_size
    xval = validation_batch(data, size)
    raw = [spec.decode(it) for it in raw_items(data.val, len(xval))] if preprocess else []
    with torch.no_grad():
        ref = model(xval).float().numpy()
    calib = served.calib_batches() if "onnx" in fmts else None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        built = _build_files(model, fmts, staging, size, data.in_chans, cfg, calib, int8_scheme,
                             spec if preprocess else None, served.exporter)
        for name, precision in built:
            file = FILES[name]
            if name.endswith("_preprocess"):
                agree, diff, (lat, p90, lat_b) = check_onnx_raw(staging / file, ref, raw, exp, device, threads)
            else:
                check = check_torchscript if name == "torchscript" else check_onnx
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
        budget_check(result, exp, cfg)
        if result.problems and not force:
            raise ExportError(f"export of trial {result.number} failed its checks: {'; '.join(result.problems)} "
                              "(pass `force` to write it anyway)", result)
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
