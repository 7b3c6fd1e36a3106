"""Cascade plans: what a cascade is (stages, thresholds, combination), its latency model and simulation.

A plan is pure data (YAML/JSON-able through to_dict). `simulate` replays a plan on per-sample logits:
the builder uses it on validation logits, the evaluation on test logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from edgecompress.cascade.planning.confidence import check_kind, check_temperature, confidence
from edgecompress.errors import ConfigError

if TYPE_CHECKING:
    import torch

COMBINES: tuple[str, ...] = ("last", "sum", "seed_alpha")
SEED_ALPHA = 1.6
PLAN_VERSION = 1
Conf = TypeVar("Conf", np.ndarray, "torch.Tensor")  # per-sample confidences


@dataclass
class StageSpec:
    """One candidate stage as the builder sees it: measurements and validation logits, never test data."""

    name: str
    latency_ms: float
    input_size: int
    val_logits: np.ndarray
    latency_batch_ms: float | None = None
    batch_size: int | None = None


@dataclass
class StagePlan:
    """A chosen stage: which model, at which input size, with its measured latencies."""

    name: str
    input_size: int
    latency_ms: float
    latency_batch_ms: float | None = None
    batch_size: int | None = None
    val_accuracy: float | None = None


def combine_weight(combine: str, alpha: float) -> float | None:
    """Weight of a later stage's logits added to the running output (None: replace, for "last")."""
    if combine not in COMBINES:
        raise ConfigError(f"unknown combine {combine!r}; valid: {', '.join(COMBINES)}")
    return None if combine == "last" else (1.0 if combine == "sum" else float(alpha))


@dataclass
class CascadePlan:
    """Stages in order, one escalation band per non-final stage, and what the builder predicted.

    A sample leaves stage k unless lows[k] < confidence_k < thresholds[k] (confidence of stage k's own
    logits at temperatures[k]). Output: the exit stage's logits ("last"), or the running sum
    out_1 + w*out_2 + ... of the stages it passed (w = 1 for "sum", alpha for "seed_alpha").
    Escalation rates are fractions of all inputs sent past stage k; expected latency is per input
    (batch=False) or per serving batch (batch=True), in ms.
    """

    stages: list[StagePlan]
    thresholds: list[float]
    kind: str = "margin"
    lows: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    combine: str = "last"
    alpha: float = SEED_ALPHA
    routing_overhead_ms: float = 0.0
    batch: bool = False
    call_overhead_ms: float = 0.0  # per call of a 2+ stage cascade (in-graph resize, confidence, If)
    predicted_accuracy: float | None = None
    predicted_latency_ms: float | None = None
    escalation_rates: list[float] = field(default_factory=list)
    constraint: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = len(self.stages)
        if m < 1:
            raise ValueError("stages must hold at least one stage (a cascade plan)")
        self.stages = [s if isinstance(s, StagePlan) else StagePlan(**s) for s in self.stages]
        self.thresholds = [float(t) for t in self.thresholds]
        self.lows = [float(v) for v in self.lows] or [-math.inf] * (m - 1)
        self.temperatures = [check_temperature(t) for t in self.temperatures] or [1.0] * m
        if len(self.thresholds) != m - 1 or len(self.lows) != m - 1 or len(self.temperatures) != m:
            raise ValueError(
                f"thresholds, lows and temperatures of a {m}-stage plan need {m - 1}, {m - 1} and {m} values, got "
                f"{len(self.thresholds)}/{len(self.lows)}/{len(self.temperatures)}"
            )
        check_kind(self.kind)
        combine_weight(self.combine, self.alpha)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def input_sizes(self) -> list[int]:
        return [s.input_size for s in self.stages]

    @property
    def latencies_ms(self) -> list[float]:
        return [s.latency_ms for s in self.stages]

    def to_dict(self) -> dict[str, Any]:
        """Plain types only; +-inf thresholds become the strings "inf"/"-inf" (valid JSON and YAML)."""
        d = asdict(self)
        d["thresholds"] = [_enc(t) for t in self.thresholds]
        d["lows"] = [_enc(t) for t in self.lows]
        d["version"] = PLAN_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CascadePlan:
        d = dict(d)
        version = d.pop("version", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise ConfigError(f"cascade plan version {version!r} is not supported (this code reads {PLAN_VERSION})")
        d["stages"] = [StagePlan(**s) for s in d["stages"]]
        return cls(**d)


def _enc(t: float) -> float | str:
    return t if math.isfinite(t) else ("inf" if t > 0 else "-inf")


def batch_params(stage: StagePlan) -> tuple[float, float, int]:
    """(fixed ms, per-sample ms, batch size) of an affine batch-latency model through both measurements."""
    b = stage.batch_size
    lb = stage.latency_batch_ms
    if lb is None:
        raise ValueError(f"stage {stage.name!r} has no latency_batch_ms: cannot plan for batch serving")
    if not b or b <= 1:
        return 0.0, float(lb), 1  # unknown batch size: cost proportional to the fraction served
    per = (lb - stage.latency_ms) / (b - 1)
    if per < 0:
        return float(lb), 0.0, b
    fixed = stage.latency_ms - per
    if fixed < 0:
        return 0.0, lb / b, b
    return fixed, per, b


def expected_latency(
    stages: Sequence[StagePlan], reach: np.ndarray, batch: bool = False, routing_overhead_ms: float = 0.0,
    call_overhead_ms: float = 0.0,
) -> np.ndarray:
    """Expected latency for reach fractions `reach` (..., m): ms per input, or per serving batch.

    Batch 1: sum_k reach_k * latency_k + overhead * (inputs escalated). Serving batch of B: stage k runs
    on the ~reach_k*B escalated samples when there is at least one: P(nonempty) * fixed + per * reach_k*B
    (affine in the sub-batch size, exact for independent samples under that model). A cascade of 2+ stages
    also pays `call_overhead_ms` per call (measured on the fused graph: resize, confidence, the If test).
    """
    reach = np.asarray(reach, dtype=np.float64)
    total = np.zeros(reach.shape[:-1]) + (call_overhead_ms if len(stages) > 1 else 0.0)
    for k, st in enumerate(stages):
        r = reach[..., k]
        if not batch:
            total = total + r * st.latency_ms + (routing_overhead_ms * r if k else 0.0)
            continue
        fixed, per, b = batch_params(st)
        nonempty = 1.0 - (1.0 - r) ** b
        total = total + nonempty * fixed + per * r * b + (routing_overhead_ms * nonempty if k else 0.0)
    return total


def escalates(conf: Conf, low: float, threshold: float) -> Conf:
    """The escalation rule: True where a sample goes on past a stage, low < confidence < threshold.

    Elementwise on a numpy array or a torch tensor of confidences (a boolean array / tensor back), so the
    simulation (`route`), CascadeModel and LeanCascade route samples identically.
    """
    return (conf > low) & (conf < threshold)


def route(
    confs: Sequence[np.ndarray],
    thresholds: Sequence[float],
    lows: Sequence[float] | None = None,
    n: int | None = None,
) -> np.ndarray:
    """Exit stage index per sample: the first stage whose confidence is outside its escalation band."""
    m = len(thresholds) + 1
    lows = [-math.inf] * (m - 1) if lows is None else lows
    n = len(confs[0]) if n is None else n
    exit_stage = np.full(n, m - 1, dtype=np.int64)
    undecided = np.ones(n, dtype=bool)
    for k in range(m - 1):
        escalate = escalates(confs[k], lows[k], thresholds[k])
        stop = undecided & ~escalate
        exit_stage[stop] = k
        undecided &= escalate
    return exit_stage


def running_outputs(logits: Sequence[np.ndarray], combine: str, alpha: float) -> list[np.ndarray]:
    """Output of a sample that exits at stage k, for every k (combined per the plan's rule)."""
    w = combine_weight(combine, alpha)
    outs = [np.asarray(logits[0], dtype=np.float32)]
    for z in logits[1:]:
        z = np.asarray(z, dtype=np.float32)
        outs.append(z if w is None else outs[-1] + np.float32(w) * z)
    return outs


@dataclass
class SimResult:
    """Replay of a plan: accuracy, where inputs went, expected latency, per-sample predictions."""

    accuracy: float
    reach: list[float]  # fraction of all inputs that reach stage k (reach[0] = 1)
    escalation_rates: list[float]  # fraction of all inputs escalated past stage k (= reach[k+1])
    exit_fractions: list[float]
    expected_latency_ms: float
    predictions: np.ndarray
    exit_stage: np.ndarray


def simulate(
    plan: CascadePlan,
    logits_list: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    labels: np.ndarray,
) -> SimResult:
    """Replay `plan` on per-sample logits (a list in stage order, or a dict by stage name) and labels."""
    if isinstance(logits_list, Mapping):
        missing = [n for n in plan.names if n not in logits_list]
        if missing:
            raise ValueError(f"logits_list has no logits for cascade stage(s) {missing}; it has {sorted(logits_list)}")
        logits = [np.asarray(logits_list[n]) for n in plan.names]
    else:
        logits = [np.asarray(z) for z in logits_list]
    labels = np.asarray(labels, dtype=np.int64)
    m = len(plan.stages)
    if len(logits) != m:
        raise ValueError(f"plan has {m} stages but {len(logits)} logit arrays were given")
    for name, z in zip(plan.names, logits, strict=True):
        if z.ndim != 2 or z.shape[0] != len(labels):
            raise ValueError(f"logits_list: the logits of stage {name!r} have shape {z.shape}, "
                             f"expected ({len(labels)}, C)")
    confs = [confidence(z, plan.kind, t) for z, t in zip(logits[:-1], plan.temperatures[:-1], strict=True)]
    exit_stage = route(confs, plan.thresholds, plan.lows, n=len(labels))
    outs = running_outputs(logits, plan.combine, plan.alpha)
    preds = np.empty(len(labels), dtype=np.int64)
    for k in range(m):
        sel = exit_stage == k
        preds[sel] = outs[k][sel].argmax(axis=1)
    reach = [float(np.mean(exit_stage >= k)) if len(labels) else 0.0 for k in range(m)]
    lat = float(expected_latency(plan.stages, np.array(reach), plan.batch, plan.routing_overhead_ms,
                                 plan.call_overhead_ms))
    return SimResult(
        accuracy=float(np.mean(preds == labels)) if len(labels) else 0.0,
        reach=reach,
        escalation_rates=reach[1:],
        exit_fractions=[float(np.mean(exit_stage == k)) for k in range(m)],
        expected_latency_ms=lat,
        predictions=preds,
        exit_stage=exit_stage,
    )
