"""CompressionConfig: one point of the search space (width, depth, bits, resolution, fine-tune)."""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgecompress.errors import ConfigError
from edgecompress.utils import stable_hash

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
CROP_CHOICES = ("none", "dic")


class CompressionConfig(BaseModel):
    """Validated, hashable description of how to compress a base model.

    `prune` is one global structured-pruning ratio or one per stage; `depth` is the fraction of residual
    blocks kept in every stage or an explicit count per stage; bits apply to weights and activations.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prune: float | tuple[float, ...] = Field(0.0, description="channel pruning ratio, global or per stage")
    depth: float | tuple[int, ...] = Field(1.0, description="fraction of blocks kept, or blocks per stage")
    w_bits: int = Field(32, description="weight bit-width")
    a_bits: int = Field(32, description="activation bit-width")
    resolution: float = Field(1.0, description="input resolution multiplier on the dataset's native size")
    finetune_epochs: int | None = Field(None, description="None = the experiment's default")
    round_to: int | None = Field(None, description="round pruned channel counts to a multiple of this")
    importance: Literal["magnitude", "taylor"] = "magnitude"
    crop: Literal["none", "dic"] = Field("none", description="dic: box predictor -> crop -> classifier "
                                         "(evaluators/dic.py); none: the whole image resized")

    @field_validator("prune")
    @classmethod
    def _check_prune(cls, v: float | tuple[float, ...]) -> float | tuple[float, ...]:
        values = v if isinstance(v, tuple) else (v,)
        for r in values:
            if not 0.0 <= r < 1.0:
                raise ValueError(f"pruning ratio must be in [0, 1), got {r}")
        return v

    @field_validator("depth")
    @classmethod
    def _check_depth(cls, v: float | tuple[int, ...]) -> float | tuple[int, ...]:
        if isinstance(v, tuple):
            if any(n < 1 for n in v):
                raise ValueError(f"blocks kept per stage must be >= 1, got {list(v)}")
        elif not 0.0 < v <= 1.0:
            raise ValueError(f"depth fraction must be in (0, 1], got {v}")
        return v

    @field_validator("w_bits", "a_bits")
    @classmethod
    def _check_bits(cls, v: int) -> int:
        if v not in ALLOWED_BITS:
            raise ValueError(f"bit-width must be one of {list(ALLOWED_BITS)}, got {v}")
        return v

    @field_validator("resolution")
    @classmethod
    def _check_resolution(cls, v: float) -> float:
        if not 0.1 <= v <= 4.0:
            raise ValueError(f"resolution multiplier must be in [0.1, 4], got {v}")
        return v

    @model_validator(mode="after")
    def _check_misc(self) -> CompressionConfig:
        if self.finetune_epochs is not None and self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if self.round_to is not None and self.round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {self.round_to}")
        return self

    # ---- derived values -------------------------------------------------------------------------
    def stage_prune(self, n_stages: int) -> list[float]:
        """Pruning ratio for each of `n_stages` stages."""
        if isinstance(self.prune, tuple):
            if len(self.prune) != n_stages:
                raise ConfigError(f"prune: {len(self.prune)} ratios given for a model with {n_stages} stages")
            return list(self.prune)
        return [float(self.prune)] * n_stages

    def stage_depth(self, blocks_per_stage: list[int]) -> list[int]:
        """Blocks kept in each stage, given the base model's blocks per stage."""
        if isinstance(self.depth, tuple):
            if len(self.depth) != len(blocks_per_stage):
                raise ConfigError(
                    f"depth: {len(self.depth)} counts given for a model with {len(blocks_per_stage)} stages"
                )
            for kept, have in zip(self.depth, blocks_per_stage):
                if kept > have:
                    raise ConfigError(f"depth: keeps {kept} blocks in a stage that has {have}")
            return list(self.depth)
        return [max(1, round(n * self.depth)) for n in blocks_per_stage]

    def input_size(self, native: int) -> int:
        """Input side length in pixels for a dataset whose native side is `native`."""
        return max(8, int(round(native * self.resolution)))

    @property
    def is_uncompressed(self) -> bool:
        return (
            self.stage_prune(1)[0] == 0.0 if not isinstance(self.prune, tuple) else all(p == 0 for p in self.prune)
        ) and self.depth == 1.0 and self.w_bits == 32 and self.a_bits == 32 and self.resolution == 1.0 \
            and self.crop == "none"

    # ---- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict; `crop` only when it is not "none", so configs from before the crop axis keep their hash."""
        d = self.model_dump()
        if d["crop"] == "none":
            del d["crop"]
        for k in ("prune", "depth"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d

    def config_hash(self) -> str:
        """Stable short hash: names cache entries and artefacts."""
        return stable_hash(self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> CompressionConfig:
        try:
            data = dict(data)
            for k in ("prune", "depth"):
                if isinstance(data.get(k), list):
                    data[k] = tuple(data[k])
            return cls(**data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, source)) from None
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, text: str, source: str = "<yaml>") -> CompressionConfig:
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of compression settings")
        return cls.from_dict(data, source)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line: `source: key.path: message` for the first error (and how many more)."""
    errors = err.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"
