"""Constraint rules over the one table (spaces.constraint_table.CONSTRAINTS): configured bounds, violation amounts.

A violation is `metric - bound` for a "max" constraint and `bound - metric` for a "min" one: <= 0 is
satisfied, > 0 is the amount over the limit. The evaluator uses `violations` (early: stage "pre";
final: all), the search records `constraint_values` with `trial.set_constraint`.
"""

from __future__ import annotations

from typing import Any

from edgecompress.errors import ConfigError
from edgecompress.spaces.constraint_table import CONSTRAINTS, ConstraintSpec
from edgecompress.utils import is_finite_number

__all__ = ["CONSTRAINTS", "ConstraintSpec", "active_constraints", "constraint_values", "satisfied", "violation",
           "violations"]


def active_constraints(constraints: Any) -> dict[str, float]:
    """The configured bounds (unset ones dropped) from a Constraints model or a mapping."""
    raw = constraints.model_dump() if hasattr(constraints, "model_dump") else dict(constraints or {})
    unknown = sorted(k for k in raw if k not in CONSTRAINTS)
    if unknown:
        raise ConfigError(f"constraints: unknown key(s) {unknown}; valid: {sorted(CONSTRAINTS)}")
    return {k: float(v) for k, v in raw.items() if v is not None}


def satisfied(violations: dict[str, float]) -> bool:
    """No constraint violated (every amount <= 0; NaN counts as violated): the feasibility rule."""
    return all(float(v) <= 0 for v in violations.values())


def violation(name: str, value: float, bound: float) -> float:
    """Amount by which `value` breaks constraint `name` with `bound` (<= 0: satisfied)."""
    spec = CONSTRAINTS[name]
    return float(value) - bound if spec.kind == "max" else bound - float(value)


def violations(metrics: dict[str, Any], constraints: Any, stage: str = "post") -> dict[str, float]:
    """Constraint name -> violation for every configured constraint whose metric is in `metrics`.

    `stage` "pre" checks only what is known before fine-tuning (see ConstraintSpec.stage).
    """
    if stage not in ("pre", "post"):
        raise ValueError(f"stage: expected 'pre' or 'post', got {stage!r}")
    out = {}
    for name, bound in active_constraints(constraints).items():
        spec = CONSTRAINTS[name]
        if stage == "pre" and spec.stage != "pre":
            continue
        if is_finite_number(metrics.get(spec.metric)):
            out[name] = violation(name, metrics[spec.metric], bound)
    return out


def constraint_values(
    constraints: Any, metrics: dict[str, Any], known: dict[str, float] | None = None
) -> dict[str, float]:
    """Value per configured constraint for `trial.set_constraint` (<= 0 satisfied); a violation already
    computed (e.g. by the evaluator) in `known` wins over recomputing it from `metrics`."""
    known = known or {}
    out = violations(metrics, constraints, "post")
    for name in active_constraints(constraints):
        if is_finite_number(known.get(name)):
            out[name] = float(known[name])
    return out
