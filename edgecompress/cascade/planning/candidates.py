"""Cascade candidates as the builder reads them: `StageSpec`'s fields only (name, latency, input size, validation
logits), from any record or mapping, or from a trial's artefact folder (metrics.json and val_* files only)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.cascade.planning.plan import StageSpec
from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.result import ARTEFACT_FILES

_FIELDS = ("name", "latency_ms", "input_size", "val_logits", "latency_batch_ms", "batch_size")


def as_stage_spec(candidate: Any) -> StageSpec:
    """Copy the builder's fields (and only those) from a StageSpec-like object or a mapping."""
    if isinstance(candidate, StageSpec):
        return candidate
    get = candidate.get if isinstance(candidate, Mapping) else (lambda k, d=None: getattr(candidate, k, d))
    missing = [k for k in _FIELDS[:4] if get(k, None) is None]
    if missing:
        raise ValueError(f"candidate {get('name', candidate)!r} lacks {', '.join(missing)} (a cascade candidate)")
    return StageSpec(
        name=str(get("name")),
        latency_ms=float(get("latency_ms")),
        input_size=int(get("input_size")),
        val_logits=np.asarray(get("val_logits"), dtype=np.float32),
        latency_batch_ms=None if get("latency_batch_ms", None) is None else float(get("latency_batch_ms")),
        batch_size=None if get("batch_size", None) is None else int(get("batch_size")),
    )


def stage_spec_from_artefacts(
    trial_dir: str | os.PathLike[str], name: str | None = None
) -> tuple[StageSpec, np.ndarray]:
    """(StageSpec, validation labels) from a trial's artefact folder: metrics.json and val_* files only."""
    trial_dir = Path(trial_dir)
    paths = {k: trial_dir / ARTEFACT_FILES[k] for k in ("metrics", "val_logits", "val_labels")}
    for p in paths.values():
        if not p.is_file():
            raise EdgeCompressError(f"cascade candidate artefact missing: {p}")
    try:
        metrics = json.loads(paths["metrics"].read_text())
        metrics = metrics.get("metrics", metrics)  # the search writes EvalResult.to_dict(): metrics nested
        logits = np.load(paths["val_logits"], allow_pickle=False)
        labels = np.load(paths["val_labels"], allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EdgeCompressError(f"cannot read cascade candidate artefacts in {trial_dir}: {e}") from None
    missing = [k for k in ("latency_ms", "input_size") if metrics.get(k) is None]
    if missing:
        raise EdgeCompressError(f"{paths['metrics']} lacks {', '.join(missing)}")
    spec = StageSpec(
        name=name or trial_dir.name,
        latency_ms=float(metrics["latency_ms"]),
        input_size=int(metrics["pipeline_input_size"] if metrics.get("crop") == "dic" else metrics["input_size"]),
        val_logits=np.asarray(logits, dtype=np.float32),
        latency_batch_ms=None
        if metrics.get("latency_batch_ms") is None
        else float(metrics["latency_batch_ms"]),
        batch_size=None if metrics.get("batch_size") is None else int(metrics["batch_size"]),
    )
    return spec, np.asarray(labels, dtype=np.int64)
