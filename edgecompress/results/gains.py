"""Gains of each trial against the study's uncompressed model (the base): what `pareto`, `report` and `export`
state next to every front row, so "how much faster than what I have, for how much accuracy" needs no sums.

The base is the complete trial whose config is the uncompressed model (no pruning, every block, 32-bit,
full resolution): the search evaluates it first (trial 0) and finalize re-trains it, so a finalized study
has its full-fidelity form. `gains` is pure (rows in, table out); `val_correctness` reads the per-sample
validation logits a trial saved, for the paired accuracy interval (study.intervals.paired_difference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.study import artefact_store
from edgecompress.study import attrs as A
from edgecompress.study.intervals import paired_difference
from edgecompress.utils import as_float

__all__ = ["BASE_LABEL", "GAIN_COLUMNS", "base_trial", "front_gains", "gains", "is_uncompressed", "val_correctness"]

BASE_LABEL = "base (uncompressed)"
#: columns of `gains`: x faster at batch 1 / at the serving batch, x smaller, accuracy change (pp) with its
#: paired 95% interval and McNemar p-value, and what the interval rests on
GAIN_COLUMNS = ("speedup_b1", "speedup_batch", "size_reduction", "accuracy_change_pp", "accuracy_change_low_pp",
                "accuracy_change_high_pp", "accuracy_change_p", "accuracy_change_basis")


def _flat(v: Any) -> list[float]:
    if isinstance(v, (list, tuple)):
        return [float(x) for x in v]
    return [as_float(v)]


def is_uncompressed(config: Any) -> bool:
    """A trial config (dict) with no pruning, 32-bit weights and activations and full resolution (depth is
    checked by `base_trial` against the other trials: a fraction of 1.0 or the most blocks kept)."""
    if not isinstance(config, Mapping):
        return False
    prune = _flat(config.get("prune", 0.0))
    return (all(p == 0 for p in prune) and as_float(config.get("w_bits", 32)) == 32
            and as_float(config.get("a_bits", 32)) == 32 and as_float(config.get("resolution", 1.0)) == 1.0)


def _blocks(row: Mapping[str, Any]) -> float:
    kept = row.get("blocks_kept")
    if isinstance(kept, (list, tuple)) and kept:
        return float(sum(kept))
    depth = (row.get(A.CONFIG) or {}).get("depth", 1.0)
    return float(sum(depth)) if isinstance(depth, (list, tuple)) else (math.inf if depth == 1.0 else -1.0)


def base_trial(df: pd.DataFrame) -> dict[str, Any] | None:
    """The frame row (as a dict) of the study's uncompressed trial, or None when the study has none complete.

    Among complete uncompressed configs, the one keeping the most blocks wins (then the lowest number): a
    depth-reduced 32-bit config is not the base when the full one was measured."""
    if A.CONFIG not in df or len(df) == 0:
        return None
    done = df[(df["state"] == "COMPLETE").to_numpy()] if "state" in df else df
    rows = [r for r in done.to_dict("records") if is_uncompressed(r.get(A.CONFIG))]
    if not rows:
        return None
    most = max(_blocks(r) for r in done.to_dict("records"))
    full = [r for r in rows if _blocks(r) >= most or _blocks(r) == math.inf]
    if not full:
        return None
    return min(full, key=lambda r: int(r["number"]))


def val_correctness(row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(per-image correctness, labels) from the validation logits the trial saved, or None without them."""
    folder = artefact_store.local_folder(row) or Path(str(row.get(A.ARTEFACT_DIR) or ""))
    logits, labels = folder / ARTEFACT_FILES["val_logits"], folder / ARTEFACT_FILES["val_labels"]
    if not row.get(A.ARTEFACT_DIR) or not logits.is_file() or not labels.is_file():
        return None
    z = np.load(logits, allow_pickle=False)
    y = np.load(labels, allow_pickle=False)
    if z.ndim != 2 or len(z) != len(y):
        return None
    return z.argmax(1) == y, y


def _ratio(num: Any, den: Any) -> float:
    a, b = as_float(num), as_float(den)
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan


def gains(rows: pd.DataFrame, base: Mapping[str, Any] | None,
          correct: Mapping[int, np.ndarray] | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """`GAIN_COLUMNS` for each row of `rows` (same index) against `base` (a frame row; None: all NaN).

    speedup = base latency / row latency (batch 1: `latency_ms`, serving batch: `latency_batch_ms`),
    size_reduction = base `size_bytes` / row `size_bytes`, accuracy change = row - base accuracy in pp.
    The interval is paired (Newcombe) when `correct` holds both trials' per-image validation correctness
    on the same images; otherwise `accuracy_change_basis` says why there is none.
    """
    out = pd.DataFrame(index=rows.index, columns=list(GAIN_COLUMNS), dtype=object)
    correct = correct or {}
    base_n = None if base is None else int(base["number"])
    for idx, r in zip(rows.index, rows.to_dict("records"), strict=True):
        if base is None:
            out.loc[idx] = [math.nan] * 7 + ["no uncompressed trial in the study"]
            continue
        n = int(r["number"])
        change = 100 * (as_float(r.get("accuracy")) - as_float(base.get("accuracy")))
        low = high = p = math.nan
        if n == base_n:
            low = high = 0.0
            p = 1.0
            basis = "the base itself"
        elif n in correct and base_n in correct and len(correct[n]) == len(correct[base_n]):
            d = paired_difference(correct[n], correct[base_n], confidence)
            low, high, p = 100 * d.low, 100 * d.high, d.p_value
            basis = f"paired, {d.n} val images"
        else:
            missing = [str(k) for k in (n, base_n) if k not in correct]
            basis = (f"no per-sample val logits for trial {', '.join(missing)}" if missing
                     else "val images differ from the base's")
        out.loc[idx] = [_ratio(base.get("latency_ms"), r.get("latency_ms")),
                        _ratio(base.get("latency_batch_ms"), r.get("latency_batch_ms")),
                        _ratio(base.get("size_bytes"), r.get("size_bytes")), change, low, high, p, basis]
    for c in GAIN_COLUMNS[:-1]:
        out[c] = out[c].astype(float)
    return out


def front_gains(df: pd.DataFrame, rows: pd.DataFrame, confidence: float = 0.95) -> tuple[pd.DataFrame,
                                                                                       dict[str, Any] | None]:
    """(`gains` of `rows` against the base of the study frame `df`, the base row), reading each trial's saved
    validation logits for the paired interval (labels must match the base's)."""
    base = base_trial(df)
    correct: dict[int, np.ndarray] = {}
    if base is not None:
        ref = val_correctness(base)
        if ref is not None:
            correct[int(base["number"])] = ref[0]
            for r in rows.to_dict("records"):
                got = val_correctness(r)
                if got is not None and np.array_equal(got[1], ref[1]):
                    correct[int(r["number"])] = got[0]
    return gains(rows, base, correct, confidence), base
