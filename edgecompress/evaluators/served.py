"""A trial as it ships, in one place: the module that is deployed and timed (the classifier, or the resize / DIC
pipeline from the dataset's native canvas), its input side, its precision, its int8 calibration images, the
deployment, and the one rule "below 8 bits the latency is estimated from the int8 measurement".

The evaluator measures a candidate through it; retarget/remeasure, export and the cascade's stages load a
trial's artefact folder through it, so each serves exactly what the search measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.compress import load_compressed
from edgecompress.evaluators.dic import BOX_NET_FILE, BoxNet, DICPipeline, ResizePipeline, load_box_net
from edgecompress.evaluators.splits import calibration_batches
from edgecompress.runtime.backend import deploy
from edgecompress.runtime.deployed import Deployed
from edgecompress.runtime.sub8bit import estimate_sub8bit
from edgecompress.spaces import CompressionConfig, ExperimentConfig
from edgecompress.study import attrs as A

MODEL_FILE = "model.pt"  # evaluators.result.ARTEFACT_FILES["model"]


def precision_for(bits: int) -> str:
    """Deploy precision for a weight bit-width: 32 fp32, 16 fp16/bf16, 8 int8, below 8 int8 + estimate."""
    return {32: "fp32", 16: "fp16"}.get(bits, "int8")


def latency_source(metrics: dict[str, Any], dep: Deployed, w_bits: int, a_bits: int) -> dict[str, Any]:
    """The latency keys to record for a measurement `metrics` of `dep`: below 8 bits (no kernels) the measured
    int8 (or fp32 fallback) latency scaled by BitOPs, labelled estimated; else the measurement, labelled measured."""
    if w_bits < 8:
        return estimate_sub8bit(metrics, dep.base_precision, w_bits, a_bits)
    return {A.LATENCY_SOURCE: "measured"}


@dataclass
class ServedTrial:
    """What ships for one trial: `module` (taking `input_size` px, `in_chans` channels) built from `classifier`
    (which takes `size` px) by the experiment's rule; int8 forms are calibrated on `calib_split` at `input_size`."""

    classifier: nn.Module
    config: CompressionConfig
    size: int
    module: nn.Module
    input_size: int
    in_chans: int
    exporter: str
    calib_split: Any
    seed: int

    @classmethod
    def build(cls, classifier: nn.Module, config: CompressionConfig, exp: ExperimentConfig, data: Any,
              box_net: nn.Module | None = None, size: int | None = None) -> ServedTrial:
        """The served form of a compressed `classifier` of `exp` on `data`: `crop: dic` ships box net -> crop ->
        classifier from the raw canvas; when the space searches crop, `none` ships resize -> classifier from the
        same canvas (both latencies include getting to the classifier's input); otherwise the classifier alone."""
        native = data.native_size
        size = config.input_size(native) if size is None else size
        classifier = classifier.eval()
        if config.crop == "dic":
            if box_net is None:
                raise EdgeCompressError("a crop: dic trial is served with its box predictor: none was given")
            module: nn.Module = DICPipeline(box_net, classifier, native, size).eval()
        elif exp.space.crop is not None:
            module = ResizePipeline(classifier, size).eval()
        else:
            module = classifier
        piped = module is not classifier
        return cls(classifier, config, size, module, native if piped else size, data.in_chans,
                   "dynamo" if piped else "legacy", data.train, exp.seed)

    @classmethod
    def load(cls, folder: str | Path | None, exp: ExperimentConfig, data: Any,
             config: CompressionConfig | None = None, classifier: nn.Module | None = None, size: int | None = None,
             stand_in: bool = False) -> ServedTrial:
        """A trial's served form from its artefact folder (model.pt, and box_net.pt for `crop: dic`), or from a
        `classifier` already loaded (with its `config` and `size`). `stand_in`: timing only (weights do not
        change latency), so a missing box net is replaced by its untrained architecture."""
        folder = None if folder is None else Path(folder)
        if classifier is None:
            if folder is None:
                raise ValueError("folder must be given when classifier is not")
            classifier, meta = load_compressed(folder / MODEL_FILE)
            config = config or CompressionConfig.from_dict(meta["config"], str(folder / MODEL_FILE))
            size = size or int(meta.get("input_size") or config.input_size(data.native_size))
        if config is None:
            raise ValueError("config must be given with a classifier")
        box = None
        if config.crop == "dic":
            path = None if folder is None else folder / BOX_NET_FILE
            if path is not None and path.is_file():
                box = load_box_net(path)
            elif stand_in:
                box = BoxNet(data.in_chans, data.native_size)
            else:
                raise EdgeCompressError(f"{path}: a crop: dic trial needs its box predictor here "
                                        f"(written by the evaluator)")
        return cls.build(classifier, config, exp, data, box_net=box, size=size)

    @property
    def precision(self) -> str:
        return precision_for(self.config.w_bits)

    def example(self) -> torch.Tensor:
        return torch.randn(1, self.in_chans, self.input_size, self.input_size)

    def calib_batches(self) -> list[torch.Tensor] | None:
        """The int8 calibration images (splits.calibration_batches at the served input side), None unless int8."""
        if self.precision != "int8":
            return None
        return calibration_batches(self.calib_split, self.input_size, self.seed)

    def deploy(self, backend: str, device: str = "cpu", threads: int = 1, workdir: Path | None = None,
               spinning: bool = True, int8_scheme: str = "auto") -> Deployed:
        """The served module in its deployed form (runtime.backend.deploy) at the trial's precision."""
        return deploy(self.module, self.example(), backend=backend, precision=self.precision,
                      calib_batches=self.calib_batches(), device=device, threads=threads, workdir=workdir,
                      exporter=self.exporter, spinning=spinning, int8_scheme=int8_scheme)

    def latency_metrics(self, measured: dict[str, Any], dep: Deployed) -> dict[str, Any]:
        """`measured` with the latency source applied (see `latency_source`)."""
        return {**measured, **latency_source(measured, dep, self.config.w_bits, self.config.a_bits)}
