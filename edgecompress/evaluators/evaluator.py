"""evaluate(config) -> measured objectives: compress, measure cost/latency, stop early if infeasible,
fine-tune with distillation, quantise to the deploy form, measure accuracy, write artefacts.

Latency is measured on the compressed architecture before fine-tuning (weights do not change latency), so
a config that already breaks a latency/size/MACs constraint costs seconds, not a fine-tune. It is measured
interleaved with the experiment's uncompressed model deployed the same way (the reference), and the value
the search and every front use is drift-corrected: the per-pair ratio x the reference's calibrated
median, which every process and study on the machine shares (runtime/latency_reference.py). That timing is
evaluators/reference_latency.py (PairedLatencyMixin, whose names are importable from here too).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn

from edgecompress.errors import CompressionError, EdgeCompressError, TrainingDivergedError, TrialTimeoutError
from edgecompress.evaluators.base_model import BaseModel, base_dir, get_base_model
from edgecompress.evaluators.batchnorm import recalibrate_batchnorm
from edgecompress.evaluators.compress import apply_fake_quant, calibrate, compress_model, save_compressed, weights_hash
from edgecompress.evaluators.cost import count_costs
from edgecompress.evaluators.data import DataBundle, load_data
from edgecompress.evaluators.dic import (
    BOX_NET_FILE,
    BoxPredictor,
    cropped_bundle,
    get_box_predictor,
    save_box_net,
)
from edgecompress.evaluators.reference_latency import (
    LatencyReference,
    PairedLatencyMixin,
)
from edgecompress.evaluators.result import ARTEFACT_FILES, EvalResult
from edgecompress.evaluators.served import ServedTrial, latency_source, precision_for
from edgecompress.evaluators.splits import calibration_batches, make_loader
from edgecompress.evaluators.train import ProgressCallback, TrainSettings, predict_logits, train_model
from edgecompress.runtime.backend import deploy
from edgecompress.runtime.deployed import Deployed
from edgecompress.spaces.config import CompressionConfig
from edgecompress.spaces.experiment import ExperimentConfig
from edgecompress.study import attrs as A
from edgecompress.study.constraints import violations
from edgecompress.study.intervals import wilson_interval
from edgecompress.utils import atomic_path, seed_everything

EpochCallback = Callable[[int, float], None]
DIC_DIR = "dic"  # in base_dir(exp): CAM boxes and the box predictor (evaluators/dic.py)


class Evaluator(Protocol):
    """What the search's objective calls: config -> EvalResult (build_evaluator returns one)."""

    def __call__(self, config: CompressionConfig, artefact_dir: Path | None = None,
                 on_epoch: EpochCallback | None = None) -> EvalResult: ...


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgeCompressError("device.device is 'cuda' but CUDA is not available on this machine")
    return name


class CompressionEvaluator(PairedLatencyMixin):
    """Evaluates CompressionConfigs for one experiment; data and the base model are loaded once, lazily."""

    def __init__(self, exp: ExperimentConfig, data: DataBundle | None = None, base: BaseModel | None = None,
                 reference: Callable[[], nn.Module] | None = None) -> None:
        """`reference`: builds the latency reference's model (default: the base model; remeasure passes one that
        never trains)."""
        self.exp = exp
        self._reference_model = reference
        self.device = resolve_device(exp.device.device)
        self._data, self._base = data, base
        self._reference: LatencyReference | None = None
        self._box: BoxPredictor | None = None
        self._cropped: DataBundle | None = None

    @property
    def data(self) -> DataBundle:
        if self._data is None:
            self._data = load_data(self.exp.dataset, self.exp.seed)
        return self._data

    @property
    def base(self) -> BaseModel:
        if self._base is None:
            self._base = get_base_model(self.exp, self.data)
        return self._base

    def prepare(self, on_progress: ProgressCallback | None = None) -> None:
        """Load the data and the base model now, training the base first when it is not cached (`on_progress`
        follows that training), and deploy (once per machine: calibrate) the latency reference. The search
        calls this before its first trial, so a data error (DataError) stops it with one line instead of
        failing every trial; a trial worker calls it before its first time budget."""
        if self._base is None:
            self._base = get_base_model(self.exp, self.data, on_progress=on_progress)
        self.latency_reference()
        if self.exp.space.crop is not None and "dic" in self.exp.space.crop.choices:
            self.cropped_data()

    def box_predictor(self) -> BoxPredictor:
        """The base model's box predictor (CAM boxes -> BoxNet), trained once and cached next to it."""
        if self._box is None:
            self._box = get_box_predictor(self.base.model, self.data, base_dir(self.exp) / DIC_DIR, self.exp.seed)
        return self._box

    def cropped_data(self) -> DataBundle:
        """The data as `crop: dic` models see it: every split cropped by the box predictor."""
        if self._cropped is None:
            self._cropped = cropped_bundle(self.data, self.box_predictor().net)
        return self._cropped

    def served(self, model: nn.Module, config: CompressionConfig, size: int) -> ServedTrial:
        """The served form of a compressed classifier (evaluators/served.py: what export, remeasure and the
        cascade serve too): the DIC or resize pipeline from the raw canvas, or the classifier at `size`."""
        box = self.box_predictor().net if config.crop == "dic" else None
        return ServedTrial.build(model, config, self.exp, self.data, box_net=box, size=size)

    def calib_batches(self, size: int, n: int = 8, batch_size: int = 32, split: Any = None) -> list[torch.Tensor]:
        """This experiment's int8 calibration images at `size` (splits.calibration_batches) from `split` (default:
        the training split; a `crop: dic` classifier alone is calibrated on its crops)."""
        return calibration_batches(self.data.train if split is None else split, size, self.exp.seed, n, batch_size)

    def _deploy(self, model: nn.Module, size: int, precision: str, workdir: Path | None = None,
                exporter: str = "legacy", split: Any = None) -> Deployed:
        example = torch.randn(1, self.data.in_chans, size, size)
        calib = self.calib_batches(size, split=split) if precision == "int8" else None
        return deploy(model, example, backend=self.exp.device.backend, precision=precision, calib_batches=calib,
                      device=self.device, threads=self.exp.device.measure_threads, workdir=workdir, exporter=exporter)

    def __call__(self, config: CompressionConfig, artefact_dir: Path | None = None,
                 on_epoch: EpochCallback | None = None) -> EvalResult:
        try:
            return self._evaluate(config, artefact_dir, on_epoch)
        except TrainingDivergedError as e:
            return EvalResult(config, state="failed", fail_reason=f"diverged: {e}")
        except TrialTimeoutError as e:
            return EvalResult(config, state="failed", fail_reason=f"timed out: {e} (finetune.max_seconds)")
        except CompressionError as e:
            return EvalResult(config, state="failed", fail_reason=f"compression: {e}")
        except torch.OutOfMemoryError as e:
            return EvalResult(config, state="failed", fail_reason=f"out of memory: {str(e).splitlines()[0]}")

    def _evaluate(self, config: CompressionConfig, artefact_dir: Path | None,
                  on_epoch: EpochCallback | None) -> EvalResult:
        exp, data = self.exp, self.data
        t0 = time.perf_counter()
        seed_everything(exp.seed)
        torch.set_num_threads(exp.device.threads)
        native = data.native_size
        size = config.input_size(native)
        example = torch.randn(1, data.in_chans, size, size)
        if config.crop == "dic":  # the classifier trains and is scored on the box predictor's crops
            data = self.cropped_data()
        taylor = None
        if config.importance == "taylor":  # first-order Taylor importance needs a labelled batch
            taylor = next(iter(make_loader(data.train, size, 64, shuffle=True, seed=exp.seed, limit=64)))
        model, report = compress_model(self.base.model, config, example, taylor_batch=taylor)
        n_bn = exp.finetune.bn_recalibration_images
        if n_bn:  # the base model's BatchNorm statistics no longer fit the compressed features
            loader = make_loader(data.train, size, min(128, n_bn), shuffle=True, seed=exp.seed + 1, limit=n_bn)
            n_bn = recalibrate_batchnorm(model, (x for x, _ in loader))
        w, a = config.w_bits, config.a_bits
        metrics: dict[str, Any] = {
            "input_size": size, "achieved_prune": report["achieved_prune"],
            "blocks_kept": report["blocks_kept"], "w_bits": w, "a_bits": a, "bn_recalibration_images": n_bn,
            # where the base model came from: a search trains it once, before its trials (a trial loads it)
            "base_from_cache": bool(self.base.reused), "base_dir": str(Path(self.base.path).absolute()),
        }
        # 1. latency and cost first (cheap); weights do not matter for speed
        served = self.served(model, config, size)
        pipe, in_size = served.module, served.input_size
        metrics.update(count_costs(pipe, (1, data.in_chans, in_size, in_size), w_bits=w, a_bits=a))
        if pipe is not model:
            metrics.update({"crop": config.crop, "pipeline_input_size": in_size})
        if config.crop == "dic":
            box = self.box_predictor()
            metrics.update({"dic_box_net_params": box.metrics["box_net_params"],
                            "dic_cam_method": box.metrics["cam_method"]})
        dep = served.deploy(exp.device.backend, self.device, exp.device.measure_threads)
        metrics.update(self.measure_latency(dep, in_size))
        metrics.update(latency_source(metrics, dep, w, a))  # below 8 bits: estimated from the int8 measurement
        metrics["measure_seconds"] = round(time.perf_counter() - t0, 3)
        pre = violations(metrics, exp.constraints, "pre")
        if any(v > 0 for v in pre.values()):
            return EvalResult(config, state="infeasible", metrics=metrics, violations=pre,
                              fail_reason="constraint violated before fine-tuning: "
                              + ", ".join(k for k, v in pre.items() if v > 0))
        # 2. fine-tune with distillation from the base model at the target resolution
        ft = exp.finetune
        settings = TrainSettings.from_recipe(ft, exp.seed)
        settings.epochs = ft.epochs if config.finetune_epochs is None else config.finetune_epochs
        settings.augment = ft.augment
        settings.memory_format = exp.device.train_memory_format
        settings.compute_lock = exp.device.exclusive_measurement
        settings.max_seconds = max(0.0, ft.max_seconds - (time.perf_counter() - t0))
        if w < 8 and ft.qat:
            apply_fake_quant(model, w, a, qat=True)
            calibrate(model, self.calib_batches(size, split=data.train))
        t1 = time.perf_counter()
        if settings.epochs > 0:
            hist = train_model(model, data.train, size, settings, val=data.val, teacher=self.base.model,
                               teacher_size=native, on_epoch=on_epoch, device=self.device)
            metrics["train_memory_format"] = hist.memory_format
            metrics["train_memory_format_reason"] = hist.memory_format_reason
        metrics["finetune_seconds"] = round(time.perf_counter() - t1, 3)
        metrics["finetune_epochs"] = settings.epochs
        # 3. the shipped form gives the accuracy
        runner, fp_model = self._final_form(model, config, size, data.train)
        metrics[A.WEIGHTS_HASH] = weights_hash(fp_model)  # names the trained weights (export records it too)
        eb = exp.device.eval_batch_size
        lock = exp.device.exclusive_measurement
        val_logits = predict_logits(runner, data.val, size, eb, self.device, compute_lock=lock)
        test_logits = predict_logits(runner, data.test, size, eb, self.device, compute_lock=lock)
        metrics["accuracy"] = float((val_logits.argmax(1) == data.val.labels.numpy()).mean())
        metrics["test_accuracy"] = float((test_logits.argmax(1) == data.test.labels.numpy()).mean())
        for split, n in (("accuracy", len(data.val)), ("test_accuracy", len(data.test))):
            metrics[f"{split}_low"], metrics[f"{split}_high"] = wilson_interval(round(metrics[split] * n), n)
        metrics["val_images"], metrics["test_images"] = len(data.val), len(data.test)
        metrics["eval_seconds"] = round(time.perf_counter() - t0, 3)
        result = EvalResult(config, state="complete", metrics=metrics,
                            violations={**pre, **violations(metrics, exp.constraints, "post")})
        if artefact_dir is not None:
            self._write_artefacts(Path(artefact_dir), fp_model, config, metrics, val_logits, test_logits)
            if config.crop == "dic":  # the export builds the one-graph pipeline from the trial's folder alone
                save_box_net(self.box_predictor().net, Path(artefact_dir) / BOX_NET_FILE)
            result.artefact_dir = str(artefact_dir)
        return result

    def _final_form(self, model: nn.Module, config: CompressionConfig, size: int,
                    train: Any = None) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module]:
        """Runner whose logits are the shipped model's, and the fp32 model to save; int8 calibration images come
        from `train` (the crops for `crop: dic`: the runner takes the classifier's input, not the canvas)."""
        w, a = config.w_bits, config.a_bits
        if w < 8:
            fq = model if getattr(model, "ec_fake_quant", None) else apply_fake_quant(copy.deepcopy(model), w, a)
            calibrate(fq, self.calib_batches(size, split=train))
            fq.eval()
            return fq, model
        if w == 32 and a == 32:
            return model.eval(), model
        dep = self._deploy(model.eval(), size, precision_for(w), split=train)
        return dep.run, model

    def _write_artefacts(self, folder: Path, model: nn.Module, config: CompressionConfig,
                         metrics: dict[str, Any], val_logits: np.ndarray, test_logits: np.ndarray) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"config": config.to_dict(), "input_size": metrics["input_size"],
                "base_key": self.exp.base_key(), "dataset": self.exp.dataset.name,
                "in_chans": self.data.in_chans, "num_classes": self.data.num_classes}
        save_compressed(model, folder / ARTEFACT_FILES["model"], meta)
        arrays = {"val_logits": val_logits, "test_logits": test_logits,
                  "val_labels": self.data.val.labels.numpy(), "test_labels": self.data.test.labels.numpy()}
        for key, arr in arrays.items():
            with atomic_path(folder / ARTEFACT_FILES[key]) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, arr)


def prepare_evaluator(evaluator: Any, on_progress: ProgressCallback | None = None) -> None:
    """Call `evaluator.prepare` if it has one (CompressionEvaluator, IsolatedEvaluator: load the data and
    the base model now), passing `on_progress` when its prepare takes it. Evaluators without one (fakes,
    custom ones) are left alone."""
    prepare = getattr(evaluator, "prepare", None)
    if prepare is None:
        return
    import inspect

    try:
        takes = "on_progress" in inspect.signature(prepare).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        takes = False
    if takes:
        prepare(on_progress=on_progress)
    else:
        prepare()


def build_evaluator(exp: ExperimentConfig) -> CompressionEvaluator:
    """The evaluator the search uses for `exp` (data and base model load on first use)."""
    return CompressionEvaluator(exp)


def evaluate_config(config: CompressionConfig, exp: ExperimentConfig, artefact_dir: Path | None = None,
             on_epoch: EpochCallback | None = None) -> EvalResult:
    """One-shot convenience: evaluate `config` under experiment `exp`."""
    return build_evaluator(exp)(config, artefact_dir, on_epoch)
