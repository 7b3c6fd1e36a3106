"""SearchSpace: one definition of the space over CompressionConfig, in Optuna, Ray Tune and grid form.

Parameter names (stable; they are the Optuna param names stored in studies):
    prune | prune_s0..prune_s{n-1}   structured pruning ratio (global, or per stage if per_stage_prune)
    depth                            fraction of residual blocks kept per stage
    w_bits, a_bits                   weight / activation bits (a_bits only when `act_bits` is searched)
    resolution                       input resolution multiplier
    finetune_epochs                  fine-tune epochs (only when searched)
    crop                             none | dic, dynamic image cropping (only when searched; categorical)
A depth fraction is canonicalised to blocks per stage (1.0 when nothing is removed), so two fractions that
give the same network give the same config (and config hash).
With `prune_limits` set (study_setup.space_for does, from the model), a ratio that would empty a layer is
clamped to the largest value of the space its stage allows: the sampler sees the clamped config's result
(a plateau it can learn from) instead of a failed trial it learns nothing from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna

from edgecompress.errors import ConfigError
from edgecompress.spaces.config import ALLOWED_BITS, CROP_CHOICES, CompressionConfig
from edgecompress.spaces.experiment import CategorySpec, ParamSpec, SpaceConfig

_INT_PARAMS = ("w_bits", "a_bits", "finetune_epochs")


@dataclass(frozen=True)
class _Dim:
    """One searchable dimension: a name, its spec, and whether its values are integers."""

    name: str
    spec: ParamSpec | CategorySpec
    integer: bool
    key: str  # the experiment key, for error messages (e.g. "space.prune")

    @property
    def discrete(self) -> bool:
        return self.spec.choices is not None or self.spec.step is not None or self.integer

    def values(self) -> list[Any]:
        """All values of a discrete dimension (choices, or low..high by step)."""
        s = self.spec
        if s.choices is not None:
            return [self._cast(c) for c in s.choices]
        if s.low is None or s.high is None:  # pragma: no cover - ParamSpec validation forbids it
            raise ConfigError(f"{self.key}: needs choices or low/high")
        step = s.step if s.step is not None else (1 if self.integer else None)
        if step is None:
            raise ConfigError(f"{self.key}: a continuous range has no finite list of values; give a step")
        n = int(math.floor((s.high - s.low) / step + 1e-9)) + 1
        return [self._cast(round(s.low + i * step, 10)) for i in range(n)]

    @property
    def categorical(self) -> bool:
        return isinstance(self.spec, CategorySpec)

    def _cast(self, v: Any) -> Any:
        if self.categorical:
            return str(v)
        return int(round(v)) if self.integer else float(v)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        s = self.spec
        if s.choices is not None:
            return optuna.distributions.CategoricalDistribution(self.values())
        if self.integer:
            return optuna.distributions.IntDistribution(
                int(s.low), int(s.high), step=int(s.step or 1), log=s.log and not s.step
            )
        return optuna.distributions.FloatDistribution(
            float(s.low), float(s.high), step=s.step if not s.log else None, log=s.log
        )

    def suggest(self, trial: optuna.Trial) -> Any:
        s = self.spec
        if s.choices is not None:
            return trial.suggest_categorical(self.name, self.values())
        if self.integer:
            return trial.suggest_int(self.name, int(s.low), int(s.high), step=int(s.step or 1))
        if s.log:
            return trial.suggest_float(self.name, float(s.low), float(s.high), log=True)
        return trial.suggest_float(self.name, float(s.low), float(s.high), step=s.step)

    def to_ray(self) -> Any:
        from ray import tune

        s = self.spec
        if s.choices is not None:
            return tune.choice(self.values())
        if self.integer:
            return tune.qrandint(int(s.low), int(s.high), int(s.step or 1))
        if s.log:
            return tune.loguniform(float(s.low), float(s.high))
        if s.step is not None:
            return tune.quniform(float(s.low), float(s.high), float(s.step))
        return tune.uniform(float(s.low), float(s.high))

    def contains(self, v: Any) -> bool:
        s = self.spec
        if self.categorical:
            return v in self.values()
        if s.choices is not None or s.step is not None:
            return any(math.isclose(float(v), float(c), abs_tol=1e-9) for c in self.values())
        return float(s.low) - 1e-12 <= float(v) <= float(s.high) + 1e-12


class SearchSpace:
    """The compression search space of one experiment for a model with `blocks_per_stage` blocks."""

    def __init__(self, cfg: SpaceConfig, n_stages: int, blocks_per_stage: list[int] | tuple[int, ...]) -> None:
        if n_stages < 1:
            raise ConfigError(f"space: a model needs >= 1 stage, got n_stages={n_stages}")
        if len(blocks_per_stage) != n_stages:
            raise ConfigError(
                f"space: blocks_per_stage has {len(blocks_per_stage)} entries for n_stages={n_stages}"
            )
        self.cfg = cfg
        self.n_stages = n_stages
        self.blocks_per_stage = [int(b) for b in blocks_per_stage]
        self.dims: list[_Dim] = []
        if cfg.per_stage_prune:
            for i in range(n_stages):
                self.dims.append(_Dim(f"prune_s{i}", cfg.prune, False, "space.prune"))
        else:
            self.dims.append(_Dim("prune", cfg.prune, False, "space.prune"))
        self.dims.append(_Dim("depth", cfg.depth, False, "space.depth"))
        self.dims.append(_Dim("w_bits", cfg.bits, True, "space.bits"))
        if cfg.act_bits is not None:
            self.dims.append(_Dim("a_bits", cfg.act_bits, True, "space.act_bits"))
        self.dims.append(_Dim("resolution", cfg.resolution, False, "space.resolution"))
        if cfg.finetune_epochs is not None:
            self.dims.append(_Dim("finetune_epochs", cfg.finetune_epochs, True, "space.finetune_epochs"))
        if cfg.crop is not None:
            self.dims.append(_Dim("crop", cfg.crop, False, "space.crop"))
        self.prune_limits: list[float] | None = None  # per stage; see set_prune_limits
        self._validate()

    def set_prune_limits(self, limits: list[float]) -> None:
        """Per-stage largest pruning ratios that keep a channel in every layer (evaluators.compress.prune_limits);
        `from_params` clamps to them. ConfigError when even the space's lowest ratio empties a layer."""
        if len(limits) != self.n_stages:
            raise ConfigError(f"space: {len(limits)} prune limits for a model with {self.n_stages} stages")
        for d in self.dims:
            if d.name.startswith("prune"):
                stages = [int(d.name[len("prune_s"):])] if d.name != "prune" else range(self.n_stages)
                low = min(d.values()) if d.discrete else float(d.spec.low)
                if any(low > limits[i] + 1e-12 for i in stages):
                    raise ConfigError(f"{d.key}: even its lowest ratio {low} would empty a layer of this model "
                                      f"(largest ratio per stage: {[round(x, 4) for x in limits]})")
        self.prune_limits = [float(x) for x in limits]

    def _clamp_prune(self, name: str, ratio: float) -> float:
        """`ratio` of dimension `name`, at most its stage limit: the largest value of the space under it."""
        if self.prune_limits is None:
            return ratio
        limit = (min(self.prune_limits) if name == "prune" else self.prune_limits[int(name[len("prune_s"):])])
        if ratio <= limit + 1e-12:
            return ratio
        d = self._dim(name)
        if d.discrete:
            return max(v for v in d.values() if v <= limit + 1e-12)  # set_prune_limits: the lowest fits
        return limit

    def prune_clamps(self, params: dict[str, Any]) -> dict[str, list[float]]:
        """{param: [asked, used]} for each pruning ratio in `params` that `from_params` clamps."""
        out = {}
        for d in self.dims:
            if d.name.startswith("prune") and d.name in params:
                used = self._clamp_prune(d.name, float(params[d.name]))
                if used != float(params[d.name]):
                    out[d.name] = [float(params[d.name]), used]
        return out

    @classmethod
    def from_config(
        cls, space_cfg: SpaceConfig, n_stages: int, blocks_per_stage: list[int] | tuple[int, ...]
    ) -> SearchSpace:
        return cls(space_cfg, n_stages, blocks_per_stage)

    # ---- validation -------------------------------------------------------------------------------
    def _validate(self) -> None:
        """Check every value a dimension can take (ConfigError names the experiment key)."""
        for d in self.dims:
            s = d.spec
            lo_hi = d.values() if d.discrete else [s.low, s.high]
            if s.log and (s.low is None or s.low <= 0):
                raise ConfigError(f"{d.key}: log scale needs low > 0, got {s.low}")
            if s.step is not None and s.step <= 0:
                raise ConfigError(f"{d.key}: step must be > 0, got {s.step}")
            for v in lo_hi:
                msg = _check_value(d.name, v)
                if msg:
                    raise ConfigError(f"{d.key}: {msg}")

    # ---- Optuna -----------------------------------------------------------------------------------
    @property
    def param_names(self) -> list[str]:
        return [d.name for d in self.dims]

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Optuna distributions of every parameter (fixed space: for create_trial and OptunaSearch)."""
        return {d.name: d.distribution() for d in self.dims}

    def suggest(self, trial: optuna.Trial) -> CompressionConfig:
        """Ask the trial for every parameter and build the validated CompressionConfig."""
        return self.from_params({d.name: d.suggest(trial) for d in self.dims})

    def from_params(self, params: dict[str, Any]) -> CompressionConfig:
        """CompressionConfig from a param dict (Optuna params or a Ray Tune config)."""
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise ConfigError(f"search params: missing {missing} (have {sorted(params)})")
        if self.cfg.per_stage_prune:
            prune: float | tuple[float, ...] = tuple(self._clamp_prune(f"prune_s{i}", float(params[f"prune_s{i}"]))
                                                     for i in range(self.n_stages))
        else:
            prune = self._clamp_prune("prune", float(params["prune"]))
        a_bits = int(params["a_bits"]) if "a_bits" in self.param_names else int(params["w_bits"])
        data = {
            "prune": prune,
            "depth": self._canonical_depth(float(params["depth"])),
            "w_bits": int(params["w_bits"]),
            "a_bits": a_bits,
            "resolution": float(params["resolution"]),
            "finetune_epochs": int(params["finetune_epochs"]) if "finetune_epochs" in self.param_names else None,
            "round_to": self.cfg.round_to,
            "importance": self.cfg.importance,
            "crop": str(params["crop"]) if "crop" in self.param_names else "none",
        }
        return CompressionConfig.from_dict(data, source="search params")

    def _canonical_depth(self, fraction: float) -> float | tuple[int, ...]:
        counts = CompressionConfig(depth=fraction).stage_depth(self.blocks_per_stage)
        return 1.0 if counts == self.blocks_per_stage else tuple(counts)

    def uncompressed(self) -> CompressionConfig:
        """The uncompressed model as this space states it (its round_to, importance, ...): the config the search
        enqueues first and finalize always re-trains; ConfigError when the space cannot express it."""
        return self.from_params(self.params_of(CompressionConfig(), source="uncompressed model"))

    def params_of(self, config: CompressionConfig, source: str = "config") -> dict[str, Any]:
        """The param dict that `from_params` maps back to `config` (for enqueue_trial)."""
        params: dict[str, Any] = {}
        ratios = config.stage_prune(self.n_stages) if isinstance(config.prune, tuple) else None
        if self.cfg.per_stage_prune:
            vals = ratios or [float(config.prune)] * self.n_stages
            for i, r in enumerate(vals):
                params[f"prune_s{i}"] = r
        else:
            if ratios is not None and len(set(ratios)) > 1:
                raise ConfigError(f"{source}: prune: per-stage ratios {ratios} but the space has one global ratio")
            params["prune"] = ratios[0] if ratios else float(config.prune)
        params["depth"] = self._depth_param(config, source)
        params["w_bits"] = config.w_bits
        if "a_bits" in self.param_names:
            params["a_bits"] = config.a_bits
        elif config.a_bits != config.w_bits:
            raise ConfigError(f"{source}: a_bits={config.a_bits} differs from w_bits but act_bits is not searched")
        params["resolution"] = config.resolution
        if "finetune_epochs" in self.param_names:
            dim = self._dim("finetune_epochs")
            if config.finetune_epochs is not None:
                params["finetune_epochs"] = config.finetune_epochs
            else:  # the experiment default is not a point of the space: take its cheapest value
                params["finetune_epochs"] = min(dim.values()) if dim.discrete else int(dim.spec.low)
        if "crop" in self.param_names:
            params["crop"] = config.crop
        elif config.crop != "none":
            raise ConfigError(f"{source}: crop={config.crop} but the space does not search crop (space.crop)")
        for d in self.dims:
            v = params[d.name]
            if not d.contains(v):
                raise ConfigError(f"{source}: {d.name}={v} is outside the search space ({d.key})")
            params[d.name] = _snap(d, v)
        return params

    def _depth_param(self, config: CompressionConfig, source: str) -> float:
        target = config.stage_depth(self.blocks_per_stage)
        dim = self._dim("depth")
        candidates = dim.values() if dim.discrete else [1.0, float(config.depth) if not
                                                        isinstance(config.depth, tuple) else 1.0]
        for c in candidates:
            if CompressionConfig(depth=c).stage_depth(self.blocks_per_stage) == target:
                return c
        raise ConfigError(f"{source}: depth {target} blocks per stage is not reachable from space.depth")

    def _dim(self, name: str) -> _Dim:
        return next(d for d in self.dims if d.name == name)

    # ---- other forms ------------------------------------------------------------------------------
    def grid(self) -> dict[str, list[Any]]:
        """Search space for optuna.samplers.GridSampler (every dimension must be discrete)."""
        return {d.name: d.values() for d in self.dims}

    def size(self) -> int | None:
        """Number of distinct parameter combinations, or None if some dimension is continuous."""
        if not all(d.discrete for d in self.dims):
            return None
        n = 1
        for d in self.dims:
            n *= len(d.values())
        return n

    def to_ray(self) -> dict[str, Any]:
        """Ray Tune param space (ray imported lazily); `from_params` turns a Tune config into a config."""
        return {d.name: d.to_ray() for d in self.dims}

    def describe(self) -> dict[str, Any]:
        """Plain dict of the space (for logs and reports)."""
        return {d.name: (d.values() if d.discrete else [d.spec.low, d.spec.high]) for d in self.dims}


def _check_value(name: str, v: Any) -> str | None:
    if name == "crop":
        return None if v in CROP_CHOICES else f"crop must be one of {list(CROP_CHOICES)}, got {v!r}"
    if name.startswith("prune") and not 0.0 <= v < 1.0:
        return f"pruning ratio must be in [0, 1), got {v}"
    if name == "depth" and not 0.0 < v <= 1.0:
        return f"depth fraction must be in (0, 1], got {v}"
    if name in ("w_bits", "a_bits") and int(v) not in ALLOWED_BITS:
        return f"bit-width {v} is not one of {list(ALLOWED_BITS)}"
    if name == "resolution" and not 0.1 <= v <= 4.0:
        return f"resolution multiplier must be in [0.1, 4], got {v}"
    if name == "finetune_epochs" and v < 0:
        return f"finetune_epochs must be >= 0, got {v}"
    return None


def _snap(d: _Dim, v: Any) -> Any:
    """Use the space's own value (exact float / int) so enqueued params match the distribution."""
    if d.categorical:
        return str(v)
    if d.discrete:
        for c in d.values():
            if math.isclose(float(v), float(c), abs_tol=1e-9):
                return c
    return int(v) if d.integer else float(v)

