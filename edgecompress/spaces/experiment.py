"""ExperimentConfig: one YAML file per experiment (dataset, model, recipes, space, objectives, budget)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgecompress.errors import ConfigError
from edgecompress.spaces.config import ALLOWED_BITS, CROP_CHOICES, format_validation_error
from edgecompress.spaces.constraint_table import Constraints
from edgecompress.utils import stable_hash


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Strict):
    name: str = "fashion_mnist"
    root: str | None = Field(None, description="data folder; None = the dataset's default locations")
    val_fraction: float = Field(0.1, gt=0.0, lt=0.9)
    train_subset: int | None = Field(None, ge=1, description="use only this many training images")
    val_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    resolution: int | None = Field(None, ge=8, description="native side in px; None = dataset default")


class ModelConfig(_Strict):
    """The model by reference: a zoo name, `torchvision:NAME`, `timm:NAME` or `package.module:factory` (in Python
    also an importable callable, stored as its reference)."""

    name: str = "resnet8"
    pretrained: str | None = Field(None, description="local weights file, or 'torchvision'")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    stages: list[str] | None = Field(None, description="dotted module names, one per stage (default: from the graph)")
    ignored_layers: list[str] | None = Field(None, description="dotted names of layers never pruned")

    @field_validator("name", mode="before")
    @classmethod
    def _reference(cls, v: Any) -> Any:
        from edgecompress.spaces.reference import reference_of

        return reference_of(v) if callable(v) or isinstance(v, str) else v

    def hashed(self) -> dict[str, Any]:
        """What names the model in hashes: fields added after a study was made count only when set."""
        return self.model_dump(exclude={f for f in ("stages", "ignored_layers") if getattr(self, f) is None})


class TrainRecipe(_Strict):
    """Base-model training recipe (SGD + one-cycle or cosine schedule)."""

    epochs: int = Field(8, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = True


class FinetuneRecipe(_Strict):
    """Fine-tuning of every compressed candidate, with distillation from the base model."""

    epochs: int = Field(1, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.02, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "cosine"
    train_subset: int | None = Field(None, ge=1, description="images per fine-tune epoch (None = all)")
    distill_weight: float = Field(0.5, ge=0, le=1, description="weight of the KD term")
    temperature: float = Field(4.0, gt=0)
    qat: bool = Field(False, description="fake-quantise during fine-tune for sub-8-bit configs")
    augment: bool = Field(False, description="crop+flip augmentation while fine-tuning (finalize turns it on)")
    bn_recalibration_images: int = Field(512, ge=0, description="training images to re-estimate BatchNorm "
                                         "statistics on after compression, before fine-tuning (0 = off)")
    max_seconds: float = Field(3600.0, gt=0, description="wall-clock budget of one trial's evaluation "
                               "(compress, measure, fine-tune, evaluate); past it the trial fails")


class ParamSpec(_Strict):
    """One searchable dimension: explicit `choices`, or a `low`..`high` range with optional `step`."""

    choices: list[float] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices must not be empty")
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
        else:
            if self.low is None or self.high is None:
                raise ValueError("give choices, or both low and high")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self


class CategorySpec(_Strict):
    """A categorical dimension: named `choices` (e.g. crop: {choices: [none, dic]})."""

    choices: list[str] = Field(min_length=1)
    low: None = Field(None, exclude=True)  # a ParamSpec's fields, always unset: SearchSpace reads both alike
    high: None = Field(None, exclude=True)
    step: None = Field(None, exclude=True)
    log: bool = Field(False, exclude=True)


class SpaceConfig(_Strict):
    """The search space over CompressionConfig (see spaces/space.py)."""

    prune: ParamSpec = Field(default_factory=lambda: ParamSpec(low=0.0, high=0.7, step=0.1))
    per_stage_prune: bool = False
    depth: ParamSpec = Field(default_factory=lambda: ParamSpec(choices=[1.0]))
    bits: ParamSpec = Field(default_factory=lambda: ParamSpec(choices=[32, 8]))
    act_bits: ParamSpec | None = Field(None, description="None = same as weight bits")
    resolution: ParamSpec = Field(default_factory=lambda: ParamSpec(choices=[0.5, 0.75, 1.0]))
    finetune_epochs: ParamSpec | None = None
    round_to: int | None = Field(None, ge=1)
    importance: Literal["magnitude", "taylor"] = "magnitude"
    crop: CategorySpec | None = Field(None, description="dynamic image cropping: choices among none, dic "
                                      "(None = not searched: crop none)")

    @field_validator("crop")
    @classmethod
    def _crop(cls, v: CategorySpec | None) -> CategorySpec | None:
        if v is not None:
            bad = [c for c in v.choices if c not in CROP_CHOICES]
            if bad:
                raise ValueError(f"crop choices must be among {list(CROP_CHOICES)}, got {bad}")
        return v

    @field_validator("bits", "act_bits")
    @classmethod
    def _bits(cls, v: ParamSpec | None) -> ParamSpec | None:
        if v is not None:
            vals = v.choices if v.choices is not None else [v.low, v.high]
            bad = [b for b in vals if int(b) not in ALLOWED_BITS]
            if bad:
                raise ValueError(f"bit-widths must be among {list(ALLOWED_BITS)}, got {bad}")
        return v


class Objective(_Strict):
    name: Literal["accuracy", "latency_ms", "latency_batch_ms", "macs", "bitops", "size_bytes", "params"]
    direction: Literal["maximize", "minimize"]



class Budget(_Strict):
    trials: int = Field(40, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    sampler: Literal["auto", "nsga2", "tpe", "random", "grid", "qmc", "fixed"] = "auto"
    population: int = Field(10, ge=2, description="NSGA-II population size")
    enqueue_uncompressed: bool = True
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="extra configs tried first")
    isolation: Literal["process", "none"] = Field(
        "process", description="process: each trial runs in a child process, so a native crash or hang "
        "fails that trial only; none: in the search process (debugging)")


class DeviceConfig(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["onnxruntime", "torch", "torch_compile"] = "onnxruntime"
    threads: int = Field(2, ge=1)
    latency_threads: int | None = Field(
        None, ge=1, description="intra-op threads of latency measurements (None: threads). With as many threads as "
        "cores, a core taken by anything else or an unlucky thread placement moved one model's figure by up to 30% "
        "between processes; 1 thread gave the same figure in every process (bench/results/latency.json), as "
        "mobile NAS papers time on one core")
    batch_size: int = Field(64, ge=1, description="serving batch size for latency_batch_ms")
    min_repeats: int = Field(20, ge=3, description="pairs (trial, reference) timed before the stop rule applies")
    max_seconds: float = Field(2.0, gt=0, description="time cap for one latency measurement")
    min_seconds: float = Field(0.3, ge=0, description="time one latency measurement takes at least before the "
                               "stop rule applies (a 50 ms window let one transient set a process's figure)")
    reference_tolerance: float = Field(
        0.10, gt=0, description="a window whose reference median is off its calibrated median by more than this "
        "fraction was disturbed: it is measured again (up to max_attempts) and the least disturbed one kept")
    max_attempts: int = Field(3, ge=1, description="latency windows tried per measurement (reference_tolerance)")
    target_cv: float = Field(0.02, gt=0, description="stop once the 95% interval of the trial/reference ratio "
                             "is within +- this fraction of it")
    exclusive_measurement: bool = Field(
        True, description="training steps hold the machine's compute lock shared and a measurement takes it "
        "exclusively, so no worker of any study on this machine computes while one measures")
    eval_batch_size: int = Field(512, ge=1)

    @property
    def measure_threads(self) -> int:
        """Threads a latency measurement (and the deployment it times) uses."""
        return self.latency_threads or self.threads
    train_memory_format: Literal["auto", "contiguous", "channels_last"] = Field(
        "auto", description="auto: channels-last only where a child-process probe shows it safe and faster")


def _default_objectives() -> list[Objective]:
    return [Objective(name="accuracy", direction="maximize"), Objective(name="latency_ms", direction="minimize")]


class ExperimentConfig(_Strict):
    """Everything one experiment needs; loaded from YAML with one-line errors naming key and file."""

    name: str = "experiment"
    seed: int = 0
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    base_training: TrainRecipe = Field(default_factory=TrainRecipe)
    finetune: FinetuneRecipe = Field(default_factory=FinetuneRecipe)
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    objectives: list[Objective] = Field(default_factory=_default_objectives)
    constraints: Constraints = Field(default_factory=Constraints)
    budget: Budget = Field(default_factory=Budget)
    device: DeviceConfig = Field(default_factory=DeviceConfig)

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[Objective]) -> list[Objective]:
        if not v:
            raise ValueError("at least one objective is needed")
        names = [o.name for o in v]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives repeat a metric: {names}")
        return v

    def base_key(self) -> str:
        """Hash naming the cached base model: dataset, model, recipe and seed."""
        ds = self.dataset.model_dump(include={"name", "val_fraction", "train_subset", "resolution"})
        return stable_hash(
            {"dataset": ds, "model": self.model.hashed(), "recipe": self.base_training.model_dump(),
             "seed": self.seed}
        )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_experiment(data: Any, source: str = "<dict>") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ExperimentConfig(**data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML; `overrides` are dotted keys (e.g. "dataset.root")."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return parse_experiment(data, str(path))


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
