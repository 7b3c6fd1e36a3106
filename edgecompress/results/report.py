"""Self-contained offline HTML report of a study (Optuna-style split: plain-data info, then plotly).

`_get_report_info` computes everything as plain data (tested without plotly); `build_report` draws
it with results/plots.py and writes one HTML file with plotly.js embedded (works offline).
"""

from __future__ import annotations

import html
import itertools
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from edgecompress.errors import ConfigError
from edgecompress.results.calibration import calibration_notes
from edgecompress.results.gains import GAIN_COLUMNS, front_gains
from edgecompress.results.pareto import hypervolume_history
from edgecompress.results.plots import format_value
from edgecompress.study import attrs as A
from edgecompress.study.frame import CONFIG_PREFIX, PARAM_PREFIX, as_frame, counts, frame_objectives, study_to_frame
from edgecompress.study.front import front, front_ranks
from edgecompress.study.storage import load_study
from edgecompress.utils import atomic_write_text, plain

MIN_TRIALS_FOR_IMPORTANCE = 5
FRONT_TABLE_COLUMNS = (
    "accuracy_low", "accuracy_high", "test_accuracy", "val_images",
    "latency_p90_ms", "latency_batch_ms", "macs", "bitops", "size_bytes", "cfg_w_bits", "cfg_a_bits",
    "cfg_resolution", "cfg_prune", "cfg_depth", "input_size", "achieved_prune", A.LATENCY_SOURCE,
)
_HOVER_SKIP = {A.CONFIG, "datetime_start", "datetime_complete", "state"}


def _param_dimension(name: str, values: pd.Series) -> dict[str, Any] | None:
    vals = list(values)
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in vals):
        nums = [float(v) for v in vals]
        if all(math.isfinite(v) for v in nums):
            return {"name": name, "values": nums, "ticktext": None}
    labels = [str(list(v) if isinstance(v, tuple) else v) for v in vals]
    cats = sorted(set(labels))
    return {"name": name, "values": [cats.index(x) for x in labels], "ticktext": cats}


def _importance(study: optuna.Study | None, objectives: list[dict[str, str]], n_complete: int) -> tuple[
    dict[str, dict[str, float]], list[str]
]:
    if study is None:
        return {}, ["parameter importance needs the Optuna study (a DataFrame was given)"]
    if n_complete < MIN_TRIALS_FOR_IMPORTANCE:
        need = MIN_TRIALS_FOR_IMPORTANCE
        return {}, [f"parameter importance skipped: {n_complete} complete trials (needs {need})"]
    out: dict[str, dict[str, float]] = {}
    notes = []
    for i, obj in enumerate(objectives):
        sign = -1.0 if obj["direction"] == "maximize" else 1.0  # PED-ANOVA explains *low* target values
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                imp = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i, sign=sign: sign * t.values[i]
                )
        except (RuntimeError, ValueError, ZeroDivisionError) as e:
            notes.append(f"parameter importance for {obj['name']} skipped: {e}")
            continue
        if imp:
            out[obj["name"]] = {k: float(v) for k, v in imp.items()}
        else:
            notes.append(f"parameter importance for {obj['name']} skipped: no parameter varies")
    return out, notes


def _check_cascade(cascade_info: Any) -> list[dict[str, Any]] | None:
    if cascade_info is None:
        return None
    out = []
    for k, c in enumerate(cascade_info):
        try:
            lat, acc = float(c["expected_latency_ms"]), float(c["accuracy"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"cascade_info[{k}]: expected a mapping with expected_latency_ms and accuracy, got {c!r}"
            ) from None
        extra = {k2: plain(v, flat=True) for k2, v in dict(c).items()}
        out.append({**extra, "expected_latency_ms": lat, "accuracy": acc})
    return sorted(out, key=lambda c: c["expected_latency_ms"])


def _fidelity_info(final: pd.DataFrame, proxy: pd.DataFrame | None) -> dict[str, Any] | None:
    """Proxy (search) vs final (finalize) validation accuracy per config, with rank correlations."""
    if proxy is None or A.PROXY_TRIAL not in final or "accuracy" not in final:
        return None
    done = final[(final["state"] == "COMPLETE") & final[A.PROXY_TRIAL].notna()]
    by_number = proxy.set_index("number")
    points = []
    for r in done.to_dict("records"):
        n = int(r[A.PROXY_TRIAL])
        if n in by_number.index and pd.notna(by_number.loc[n, "accuracy"]):
            points.append({"final_trial": int(r["number"]), A.PROXY_TRIAL: n,
                           "proxy_accuracy": float(by_number.loc[n, "accuracy"]),
                           "final_accuracy": float(r["accuracy"])})
    out: dict[str, Any] = {"points": points, "kendall_tau": None, "spearman": None}
    if len(points) >= 3:
        from scipy import stats

        x = [p["proxy_accuracy"] for p in points]
        y = [p["final_accuracy"] for p in points]
        out["kendall_tau"] = plain(float(stats.kendalltau(x, y).statistic), flat=True)
        out["spearman"] = plain(float(stats.spearmanr(x, y).statistic), flat=True)
    return out


def _front_table(df: pd.DataFrame, rows: pd.DataFrame, names: list[str]) -> dict[str, Any]:
    """A front as table data: objectives, the trial's measurements, then its gains against the base."""
    g, _ = front_gains(df, rows)
    rows = pd.concat([rows, g], axis=1)
    extra_cols = [c for c in FRONT_TABLE_COLUMNS if c in rows.columns and c not in names]
    cols = ["number", *names, *GAIN_COLUMNS, *extra_cols, "feasible"]
    return {"columns": cols, "rows": [{c: plain(r.get(c), flat=True) for c in cols} for r in rows.to_dict("records")]}


def _base_info(df: pd.DataFrame, names: list[str]) -> dict[str, Any] | None:
    """The uncompressed trial the gains are against (number, objective values, latency/accuracy), or None."""
    from edgecompress.results.gains import base_trial

    b = base_trial(df)
    if b is None:
        return None
    return {"number": int(b["number"]), "values": [plain(b.get(n)) for n in names],
            **{k: plain(b.get(k)) for k in ("accuracy", "latency_ms", "latency_batch_ms", "size_bytes")}}


def _get_report_info(
    study_or_df: Any, cascade_info: list[dict[str, Any]] | None = None, objectives: Any = None,
    proxy: Any = None, deployable: bool = False,
) -> dict[str, Any]:
    """Everything the report shows, as plain data (lists, dicts, floats, strings). `proxy`: the search study
    (or its frame) of a finalized study, for proxy vs final accuracy. Both fronts are in it (all trials, and
    deployable ones: latency measured); `deployable` makes the deployable one the front tabled first."""
    study = None
    if isinstance(study_or_df, pd.DataFrame):
        df = study_or_df
    else:
        study = load_study(study_or_df)
        df = study_to_frame(study)
    objs = frame_objectives(df, objectives)
    names = [o["name"] for o in objs]
    ranks = front_ranks(df, objs)
    dep_ranks = front_ranks(df, objs, deployable=True)
    done = df[(ranks >= 0).to_numpy()]
    notes: list[str] = []

    points = []
    for idx, row in done.iterrows():
        feasible = bool(row.get("feasible", True))
        on_front = int(ranks[idx]) == 0
        category = "infeasible" if not feasible else ("front" if on_front else "dominated")
        hover = {"trial": int(row["number"])}
        for col, v in row.items():
            if col in _HOVER_SKIP or col == "number":
                continue
            pv = plain(v, flat=True)
            if pv is not None:
                hover[col] = pv
        points.append({
            "number": int(row["number"]),
            "values": [float(row[n]) for n in names],
            "category": category,
            "on_front": on_front,
            "on_deployable_front": int(dep_ranks[idx]) == 0,
            "feasible": feasible,
            "estimated": row.get(A.LATENCY_SOURCE) == "estimated",
            "hover": hover,
        })
    if any(p["estimated"] for p in points):
        notes.append("diamonds: latency estimated from BitOPs (no sub-8-bit kernels), not measured")
    if done.shape[0] and not any(p["feasible"] for p in points):
        notes.append("no trial meets the constraints: the front shows the least-violating trials")

    front_df = front(df, objs)  # the one front function: same rows and order as `pareto`
    dep_df = front(df, objs, deployable=True)  # computed over deployable trials, not the front filtered
    tables = {"all": _front_table(df, front_df, names), "deployable": _front_table(df, dep_df, names)}
    if set(front_df["number"]) != set(dep_df["number"]):
        notes.append(f"the front of all trials ({len(front_df)}) differs from the deployable front "
                     f"({len(dep_df)}, latency measured here): trials with estimated latency dominate measured ones")
    base = _base_info(df, names)
    if base is None:
        notes.append("no complete uncompressed trial: no gains against the base (the search enqueues it first "
                     "unless budget.enqueue_uncompressed is false)")
    notes += calibration_notes(df)  # latencies resting on several reference calibrations
    front_rows = tables["all"]["rows"]
    table_cols = tables["all"]["columns"]

    param_cols = [c for c in done.columns if c.startswith(PARAM_PREFIX)]
    if not param_cols:
        param_cols = [c for c in done.columns if c.startswith(CONFIG_PREFIX)]
    dims = []
    if len(done):
        for c in param_cols:
            col = done[c]
            if col.isna().any():
                continue
            d = _param_dimension(c.removeprefix(PARAM_PREFIX), col)
            if d is not None:
                dims.append(d)
        if dims:
            dims += [{"name": n, "values": [float(v) for v in done[n]], "ticktext": None} for n in names]
    if not dims:
        notes.append("parallel coordinates skipped: no parameters set on every complete trial")
    parallel = {
        "numbers": [int(n) for n in done["number"]] if dims else [],
        "dimensions": dims,
        "color": {"name": names[0], "values": [float(v) for v in done[names[0]]] if dims else []},
    }

    hv = hypervolume_history(df, objs)
    hv_info = {
        "numbers": [int(n) for n in hv["number"]],
        "values": [float(v) for v in hv["hypervolume"]],
        "reference": hv.attrs.get("reference"),
    }
    importance, imp_notes = _importance(study, objs, len(done))
    notes += imp_notes

    single = []  # the front's single models, drawn next to the cascade curve
    if {"latency_ms", "accuracy"} <= set(front_rows[0] if front_rows else {}):
        single = [
            {"number": r["number"], "latency_ms": r["latency_ms"], "accuracy": r["accuracy"]}
            for r in front_rows
            if r.get("feasible") and r["latency_ms"] is not None and r["accuracy"] is not None
        ]
    failures = [
        {"number": int(r["number"]), A.FAIL_REASON: plain(r.get(A.FAIL_REASON), flat=True) or ""}
        for r in df[df["state"] == "FAIL"].to_dict("records")
    ] if "state" in df else []

    return {
        "study_name": df.attrs.get("study_name"),
        "objectives": objs,
        "constraints": dict(df.attrs.get("constraints") or {}),
        "counts": counts(df),
        "points": points,
        "front_numbers": [int(n) for n in front_df["number"]],
        "deployable_front_numbers": [int(n) for n in dep_df["number"]],
        "front_table": {"columns": table_cols, "rows": front_rows},
        "deployable_front_table": tables["deployable"],
        "deployable": deployable,
        "base": base,
        "pairs": list(itertools.combinations(range(len(objs)), 2)),  # empty: one objective
        "parallel": parallel,
        "hypervolume": hv_info,
        "importance": importance,
        "cascade": _check_cascade(cascade_info),
        "single_models": single,
        "failures": failures,
        "fidelity": _fidelity_info(df, None if proxy is None else as_frame(proxy)),
        "notes": notes,
    }


# ---- HTML ---------------------------------------------------------------------------------------------


def _table(columns: list[str], rows: list[dict[str, Any]], row_id: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        attr = f' id="{row_id}-{r["number"]}"' if row_id and "number" in r else ""
        cells = "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns)
        body.append(f"<tr{attr}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return format_value(v)


def _base_paragraph(base: dict[str, Any] | None) -> str:
    """What the gain columns are against: speed-up = base latency / latency, size_reduction = base size / size."""
    if base is None:
        return '<p class="note">No complete uncompressed trial: the gain columns are empty.</p>'
    return (f"<p>Gains against the base (uncompressed, trial {base['number']}; marked on every plot): speedup_b1 and "
            "speedup_batch = the base's latency / the trial's (batch 1, serving batch), size_reduction = the base's "
            "size / the trial's, accuracy_change_pp with its paired 95% interval (Newcombe, per-image validation "
            "correctness) where both trials saved their validation logits.</p>")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.85em} td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f3f3} .note{color:#8a5a00} .counts span{margin-right:1.5em}
"""


def render_html(info: dict[str, Any]) -> str:
    """The report page for `info`; plotly.js is embedded once, inline (no network needed)."""
    from edgecompress.results import plots

    figures = [
        ("Pareto front", plots.front_figure(info)),
        ("Parameters", plots.parallel_figure(info)),
        ("Hypervolume over trials", plots.hypervolume_figure(info)),
        ("Parameter importance", plots.importance_figure(info)),
        ("Cascade", plots.cascade_figure(info)),
        ("Search (proxy) vs finalized accuracy", plots.fidelity_figure(info)),
    ]
    title = f"edgecompress report: {info['study_name'] or 'study'}"
    c = info["counts"]
    counts = "".join(f"<span><b>{k}</b> {v}</span>" for k, v in c.items())
    objs = ", ".join(f"{o['name']} ({o['direction']})" for o in info["objectives"])
    cons = ", ".join(f"{k} = {v}" for k, v in info["constraints"].items()) or "none"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Objectives: {html.escape(objs)}. Constraints: {html.escape(cons)}.</p>",
        f'<p class="counts">{counts}</p>',
        *[f'<p class="note">{html.escape(n)}</p>' for n in info["notes"]],
    ]
    plotlyjs_done = False
    for heading, fig in figures:
        if fig is None:
            continue
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        height = fig.layout.height or 450
        parts.append(
            fig.to_html(full_html=False, include_plotlyjs=not plotlyjs_done, default_height=f"{height}px")
        )
        plotlyjs_done = True
        if heading == "Pareto front":
            parts.append(_base_paragraph(info.get("base")))
            order = [("deployable_front_table", "Deployable front (latency measured here)", "deployable"),
                     ("front_table", "Front of all trials (including estimated latency)", "trial")]
            for key, label, row_id in (order if info.get("deployable") else order[::-1]):
                table = info[key]
                parts.append(f"<h2>{label}: {len(table['rows'])} trials, sorted by latency</h2>")
                parts.append(_table(table["columns"], table["rows"], row_id=row_id))
    if info["failures"]:
        parts.append(f"<h2>Failed trials ({len(info['failures'])})</h2>")
        parts.append(_table(["number", A.FAIL_REASON], info["failures"], row_id="failed"))
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def build_report(
    study: Any, path: str | os.PathLike[str], cascade_info: list[dict[str, Any]] | None = None, proxy: Any = None,
    deployable: bool = False,
) -> Path:
    """Write the offline HTML report of `study` (Study, name, URL or frame) to `path` atomically; with `proxy`
    (the search study of a finalized study), proxy vs final accuracy per config is drawn too. `deployable`:
    the deployable front's table comes first (both fronts are always drawn)."""
    info = _get_report_info(study, cascade_info=cascade_info, proxy=proxy, deployable=deployable)
    out = Path(path)
    atomic_write_text(out, render_html(info))
    return out
