"""Dynamic cascades: pick stages and confidence thresholds from validation logits, run and save them."""

from __future__ import annotations

from edgecompress.cascade.pipeline.from_study import CascadeBuild, cascade_from_study
from edgecompress.cascade.planning.builder import build_cascade, cascade_front, seed_rule_plan
from edgecompress.cascade.planning.candidates import as_stage_spec, stage_spec_from_artefacts
from edgecompress.cascade.planning.confidence import CONFIDENCE_KINDS, confidence, fit_temperature
from edgecompress.cascade.planning.plan import (
    COMBINES,
    SEED_ALPHA,
    CascadePlan,
    SimResult,
    StagePlan,
    StageSpec,
    expected_latency,
    simulate,
)
from edgecompress.cascade.planning.risk import RiskControl, control_risk, plan_with_risk
from edgecompress.cascade.serving.cascade_model import CascadeModel, load_cascade, save_cascade
from edgecompress.cascade.serving.fused import (
    FusedCheck,
    check_fused,
    fused_cascade_graph,
    fused_session,
    measure_fused_overheads,
)
from edgecompress.cascade.serving.lean import LeanCascade, shared_pool_stages

__all__ = [
    "COMBINES",
    "FusedCheck",
    "LeanCascade",
    "RiskControl",
    "check_fused",
    "control_risk",
    "fused_cascade_graph",
    "fused_session",
    "measure_fused_overheads",
    "plan_with_risk",
    "shared_pool_stages",
    "CascadeBuild",
    "CONFIDENCE_KINDS",
    "SEED_ALPHA",
    "CascadeModel",
    "CascadePlan",
    "SimResult",
    "StagePlan",
    "StageSpec",
    "as_stage_spec",
    "build_cascade",
    "cascade_from_study",
    "cascade_front",
    "confidence",
    "expected_latency",
    "fit_temperature",
    "load_cascade",
    "save_cascade",
    "seed_rule_plan",
    "simulate",
    "stage_spec_from_artefacts",
]
