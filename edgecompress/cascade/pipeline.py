"""The cascade pipeline as one library call: study -> candidates -> plan -> measured evaluation -> saved folder.

`cascade_from_study` is what `edgecompress cascade` runs (the CLI only prints its result); scripts call it
the same way: `edgecompress.cascade_from_study("demo", "runs/cascade", min_accuracy=0.9)`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.cascade.builder import check_target
from edgecompress.cascade.confidence import check_kind
from edgecompress.cascade.evaluate import (
    Candidate,
    CascadeEvaluation,
    evaluate_cascade,
    plan_cascade,
    stage_modules,
    study_candidates,
)
from edgecompress.cascade.plan import SEED_ALPHA, CascadePlan, combine_weight
from edgecompress.cascade.runtime import CascadeModel, save_cascade
from edgecompress.errors import ConfigError
from edgecompress.study.attrs import study_experiment
from edgecompress.study.storage import load_study
from edgecompress.utils import atomic_write_json

__all__ = ["CascadeBuild", "cascade_from_study", "check_options"]


@dataclass
class CascadeBuild:
    """What `cascade_from_study` chose, measured and wrote."""

    study_name: str
    out_dir: Path
    plan: CascadePlan
    evaluation: CascadeEvaluation
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def check_options(*, kind: str = "margin", combine: str = "last", max_stages: int = 4,
                  min_accuracy: float | None = None, max_latency: float | None = None, samples: int = 1000) -> None:
    """ConfigError (one line) for a bad option, before any study is opened or model loaded."""
    check_kind(kind)
    combine_weight(combine, SEED_ALPHA)
    if not 2 <= int(max_stages) <= 8:
        raise ConfigError(f"max_stages must be between 2 and 8, got {max_stages!r}")
    check_target(min_accuracy, max_latency)
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples!r}")


def cascade_from_study(
    study: Any,
    out: str | os.PathLike[str],
    *,
    min_accuracy: float | None = None,
    max_latency: float | None = None,
    storage: Any = None,
    kind: str = "margin",
    combine: str = "last",
    max_stages: int = 4,
    batch: bool = False,
    samples: int = 1000,
    final: str = "auto",
    deployable: bool = True,
) -> CascadeBuild:
    """Choose stages and thresholds on validation logits from the study's front (edgecompress.study.front over
    feasible, measured trials), measure the cascade end to end on the test split, and save it to `out`
    (TorchScript stages + cascade.yaml, evaluation.json, front.json). `max_latency` is in ms. `deployable`
    (default): candidates from the front of measured-latency trials; False also admits estimated ones."""
    from edgecompress.evaluators.data import load_data

    check_options(kind=kind, combine=combine, max_stages=max_stages, min_accuracy=min_accuracy,
                  max_latency=max_latency, samples=samples)
    st = load_study(study, storage, final=final)
    exp = study_experiment(st)
    cands, labels, notes = study_candidates(st, include_estimated=not deployable)
    plan = plan_cascade(cands, labels, min_accuracy=min_accuracy, max_latency=max_latency, kind=kind,
                        combine=combine, max_stages=max_stages, batch=batch)
    data = load_data(exp.dataset, exp.seed)
    if len(plan.stages) == 1:
        notes.append(f"one model alone ({plan.names[0]}) meets the target: no cascade beats it")
    ev, _ = evaluate_cascade(st, plan, cands, labels, exp, data, samples=samples, notes=notes)
    by_name = {c.spec.name: c for c in cands}
    torch_cascade = CascadeModel(stage_modules(by_name, plan.names, exp, data, deployed=False), plan,
                                 in_chans=data.in_chans)
    out_dir = Path(out)
    save_cascade(torch_cascade, out_dir)
    atomic_write_json(out_dir / "evaluation.json", ev.to_dict())
    atomic_write_json(out_dir / "front.json", ev.front)
    files = sorted(p.name for p in out_dir.iterdir())
    return CascadeBuild(st.study_name, out_dir, plan, ev, cands, list(ev.notes), files)
