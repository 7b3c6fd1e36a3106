"""The constraint table: every constraint an experiment can set, the metric it bounds and when it is known.

One table drives the experiment schema (`Constraints`, built from it), the evaluator's early and final
checks and the values the search records with `trial.set_constraint` (edgecompress.study.constraints).
It lives in `spaces` because the experiment schema is built from it; `edgecompress.study` owns the rules.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, create_model


class ConstraintSpec(NamedTuple):
    """One constraint: bounds `metric` from above ("max") or below ("min"); `stage` "pre" = known before
    fine-tuning (latency, size, MACs: a violation stops the trial early), "post" = only after it."""

    metric: str
    kind: Literal["max", "min"]
    stage: Literal["pre", "post"]
    description: str
    unit_interval: bool = False  # the bound lies in [0, 1] (accuracy)


CONSTRAINTS: dict[str, ConstraintSpec] = {
    "max_latency_ms": ConstraintSpec("latency_ms", "max", "pre", "batch-1 median latency (ms) at most"),
    "max_latency_batch_ms": ConstraintSpec("latency_batch_ms", "max", "pre",
                                           "serving-batch median latency (ms) at most"),
    "max_size_bytes": ConstraintSpec("size_bytes", "max", "pre", "deployed model size (bytes) at most"),
    "max_macs": ConstraintSpec("macs", "max", "pre", "multiply-accumulates per image at most"),
    "min_accuracy": ConstraintSpec("accuracy", "min", "post", "validation accuracy at least", unit_interval=True),
}


def _field(spec: ConstraintSpec) -> Any:
    if spec.unit_interval:
        return (float | None, Field(None, ge=0, le=1, description=spec.description))
    return (float | None, Field(None, gt=0, description=spec.description))


Constraints: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "Constraints",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Bounds on measured metrics (edgecompress.spaces.constraint_table.CONSTRAINTS); None = not set.",
    **{name: _field(spec) for name, spec in CONSTRAINTS.items()},
)
