"""Tables the CLI prints: number formats, wide tables, the Pareto-front summary of a search or finalize."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from edgecompress.cli.base_cmd import console
from edgecompress.utils import as_float

EST = " (est.)"


def fmt_ms(v: Any, estimated: bool = False) -> str:
    """'0.123 ms', or '~0.123 ms (est.)' for an estimated latency; '-' when missing."""
    f = as_float(v)
    if math.isnan(f):
        return "-"
    text = f"{f:.3g} ms" if f < 100 else f"{f:.0f} ms"
    return f"~{text}{EST}" if estimated else text


def fmt_count(v: Any) -> str:
    """MACs/bytes with an SI suffix: 1.2M, 35.1k."""
    f = as_float(v)
    if math.isnan(f):
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(f) >= div:
            return f"{f / div:.3g}{suffix}"
    return f"{f:.0f}"


def _bits(r: dict[str, Any]) -> str:
    w, a = r.get("cfg_w_bits", r.get("w_bits")), r.get("cfg_a_bits", r.get("a_bits"))
    if w is None or (isinstance(w, float) and math.isnan(w)):
        return "-"
    return f"{int(w)}" if w == a or a is None else f"w{int(w)}/a{int(a)}"


def front_rows(df: Any, max_latency: float | None = None, min_accuracy: float | None = None,
               all_trials: bool = False, deployable: bool = False) -> list[dict[str, Any]]:
    """Rows of the pareto table (front, or all complete trials), filtered, sorted by latency, each with its gains
    against the study's uncompressed trial (results.gains); plain data. `deployable`: the front of the trials
    whose latency was measured (not estimated), computed over those trials."""
    from edgecompress.results.gains import GAIN_COLUMNS, front_gains
    from edgecompress.study import attrs as A
    from edgecompress.study.frame import frame_objectives
    from edgecompress.study.front import candidates, front, sort_key

    if all_trials:
        objs = frame_objectives(df)
        rows = candidates(df, objs, deployable=deployable)
        key, asc = sort_key(rows, objs)
        rows = rows.sort_values([key, "number"], ascending=[asc, True], kind="stable")
    else:
        rows = front(df, deployable=deployable)
    g, base = front_gains(df, rows)
    out = []
    for (idx, r) in zip(rows.index, rows.to_dict("records"), strict=True):
        lat, acc = as_float(r.get("latency_ms")), as_float(r.get("accuracy"))
        if max_latency is not None and not lat <= max_latency:
            continue
        if min_accuracy is not None and not acc >= min_accuracy:
            continue
        est = r.get(A.LATENCY_SOURCE) == "estimated"
        row = {
            "trial": int(r["number"]), "accuracy": acc,
            "accuracy_low": as_float(r.get("accuracy_low")), "accuracy_high": as_float(r.get("accuracy_high")),
            "test_accuracy": as_float(r.get("test_accuracy")),
            "latency_ms": lat, "latency_p90_ms": as_float(r.get("latency_p90_ms")),
            "latency_batch_ms": as_float(r.get("latency_batch_ms")), "batch_size": as_float(r.get("batch_size")),
            "macs": as_float(r.get("macs")), "size_bytes": as_float(r.get("size_bytes")), "bits": _bits(r),
            "input_size": as_float(r.get("input_size")),
            "achieved_prune": as_float(r.get("achieved_prune", r.get("cfg_prune"))),
            "estimated": est, "feasible": bool(r.get("feasible", True)),
            A.LATENCY_SOURCE: r.get(A.LATENCY_SOURCE) or "-",
            "crop": r.get("cfg_crop") if isinstance(r.get("cfg_crop"), str) else "none",
            "is_base": base is not None and int(r["number"]) == int(base["number"]),
        }
        row.update({c: g.at[idx, c] for c in GAIN_COLUMNS})
        out.append(row)
    return out


def base_line(df: Any) -> str:
    """Which trial the gains are against, with its numbers (or why there are none)."""
    from edgecompress.results.gains import base_trial

    b = base_trial(df)
    if b is None:
        return ("gains: none, the study has no complete uncompressed trial (the search enqueues it first unless "
                "budget.enqueue_uncompressed is false)")
    batch = as_float(b.get("batch_size"))
    return (f"gains against the base (uncompressed, trial {int(b['number'])}): accuracy "
            f"{as_float(b.get('accuracy')):.4f}, "
            f"latency {fmt_ms(b.get('latency_ms'))} at batch 1, {fmt_ms(b.get('latency_batch_ms'))} at batch "
            f"{'-' if math.isnan(batch) else int(batch)}, size {fmt_count(b.get('size_bytes'))}B")


def fmt_x(v: Any, estimated: bool = False) -> str:
    """'3.2x' (a speed-up or size ratio), '~3.2x' when it rests on an estimated latency; '-' when missing."""
    f = as_float(v)
    if math.isnan(f):
        return "-"
    return f"~{f:.2f}x" if estimated else f"{f:.2f}x"


def fmt_pp(change: Any, low: Any, high: Any) -> str:
    """'-0.42 pp [-1.10, +0.25]': accuracy change against the base with its paired interval when there is one."""
    c, lo, hi = as_float(change), as_float(low), as_float(high)
    if math.isnan(c):
        return "-"
    text = f"{c:+.2f} pp"
    return text if math.isnan(lo) or math.isnan(hi) else f"{text} [{lo:+.2f}, {hi:+.2f}]"


def fmt_acc(acc: float, low: float, high: float) -> str:
    """'0.9012 [0.8950, 0.9071]': the accuracy with its 95% interval (Wilson) when the trial recorded one."""
    if math.isnan(low) or math.isnan(high):
        return f"{acc:.4f}"
    return f"{acc:.4f} [{low:.4f}, {high:.4f}]"


def fmt_lat(p50: Any, p90: Any, estimated: bool) -> str:
    """'0.0848 / 0.0863', or '~0.0187 / 0.0191 (est.)' for an estimated latency (ms)."""
    a, b = as_float(p50), as_float(p90)
    if math.isnan(a):
        return "-"
    text = f"{a:.3g}" + ("" if math.isnan(b) else f" / {b:.3g}")
    return f"~{text}{EST}" if estimated else text


def pareto_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The front as a rich table with gains against the base (trial marked 'base'); estimated latencies (and the
    speed-ups resting on them) read '~x' and the row is yellow."""
    from edgecompress.study import attrs as A

    t = Table(title=title)
    cols = ["trial", "accuracy", "test acc", "latency ms p50 / p90", "batch ms", "MACs", "size", "bits", "px",
            "pruned", "latency", "faster b1", "faster bN", "smaller", "acc vs base (95% paired)"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("bits", "latency") else "right")
    has_test = any(not math.isnan(r["test_accuracy"]) for r in rows)
    for r in rows:
        est = r["estimated"]
        mark = ("" if r["feasible"] else " [red](infeasible)[/]") + (" base" if r.get("is_base") else "")
        batch = as_float(r["latency_batch_ms"])
        t.add_row(
            f"{r['trial']}{mark}", fmt_acc(r["accuracy"], r["accuracy_low"], r["accuracy_high"]),
            f"{r['test_accuracy']:.4f}" if has_test and not math.isnan(r["test_accuracy"]) else "-",
            fmt_lat(r["latency_ms"], r["latency_p90_ms"], est),
            "-" if math.isnan(batch) else (f"~{batch:.3g}" if est else f"{batch:.3g}"),
            fmt_count(r["macs"]), fmt_count(r["size_bytes"]) + ("B" if not math.isnan(r["size_bytes"]) else ""),
            r["bits"], ("-" if math.isnan(r["input_size"]) else str(int(r["input_size"])))
            + (" dic" if r.get("crop") == "dic" else ""),
            "-" if math.isnan(r["achieved_prune"]) else f"{r['achieved_prune']:.2f}",
            "estimated" if est else r[A.LATENCY_SOURCE],
            fmt_x(r.get("speedup_b1"), est), fmt_x(r.get("speedup_batch"), est), fmt_x(r.get("size_reduction")),
            fmt_pp(r.get("accuracy_change_pp"), r.get("accuracy_change_low_pp"), r.get("accuracy_change_high_pp")),
            style="yellow" if est else None,
        )
    return t


def print_wide(renderable: Any) -> None:
    """Print a table; when stdout is not a terminal (pipes, CI logs) do not squeeze it to 80 columns."""
    if console.is_terminal:
        console.print(renderable)
    else:
        from rich.console import Console

        Console(width=max(console.width, 220)).print(renderable)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "/".join(_fmt(x) for x in v)
    return str(v)


def front_gains_by_trial(summary: Any) -> dict[int, dict[str, Any]]:
    """results.gains of the summary's front rows against the study's uncompressed trial ({} without one)."""
    from edgecompress.errors import EdgeCompressError
    from edgecompress.results.gains import front_gains
    from edgecompress.study import load_study, study_to_frame
    from edgecompress.utils import plain

    if not summary.front:
        return {}
    from edgecompress.study.storage import FINAL_SUFFIX

    # exactly the summary's study: a search summary's trials, or (after finalize) the finalized study's; "proxy" on
    # a `-final` name would open its search study, whose trial numbers mean other configs
    fidelity = "auto" if summary.study_name.endswith(FINAL_SUFFIX) else "proxy"
    try:
        df = study_to_frame(load_study(summary.study_name, summary.storage, final=fidelity))
    except EdgeCompressError:  # a storage the summary names but this process cannot reopen: no gains column
        return {}
    numbers = [int(r["number"]) for r in summary.front]
    rows = df[df["number"].isin(numbers)]
    g, base = front_gains(df, rows)
    if base is None:
        return {}
    return {int(n): {"base_trial": int(base["number"]), **plain(g.loc[i].to_dict())}
            for i, n in zip(rows.index, rows["number"], strict=True)}


def print_summary(summary: Any) -> None:
    """Counts, where the study is, and the feasible Pareto front as a table with gains against the base."""
    from edgecompress.search.progress import describe, format_seconds
    from edgecompress.study import attrs as A

    for w in summary.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(
        f"study [bold]{summary.study_name}[/] ({summary.backend}, sampler {summary.sampler}) in {summary.storage}: "
        f"{summary.new_trials} new trial(s) in {format_seconds(summary.elapsed_s)}"
    )
    console.print(describe(summary.stats))
    if not summary.front:
        console.print("no feasible completed trial yet")
        return
    names = list(summary.front[0]["values"])
    table = Table(title=f"Pareto front ({len(summary.front)} trials)")
    table.add_column("trial", justify="right")
    for n in names:
        table.add_column(n, justify="right")
    for col in ("prune", "depth", "bits w/a", "res", "faster b1", "acc vs base"):
        table.add_column(col, justify="right")
    gains = front_gains_by_trial(summary)
    for row in summary.front:
        c = row[A.CONFIG]
        g = gains.get(int(row["number"]), {})
        cached = f" (={row[A.CACHED_FROM]})" if row.get(A.CACHED_FROM) is not None else ""
        est = "~" if row.get(A.LATENCY_SOURCE) == "estimated" or c.get("w_bits", 32) < 8 else ""
        table.add_row(
            f"{row['number']}{cached}", *(_fmt(row["values"][n]) for n in names), _fmt(c.get("prune")),
            _fmt(c.get("depth")), f"{c.get('w_bits')}/{c.get('a_bits')}",
            _fmt(c.get("resolution")) + (" +dic" if c.get("crop") == "dic" else ""),
            fmt_x(g.get("speedup_b1"), bool(est)),
            fmt_pp(g.get("accuracy_change_pp"), g.get("accuracy_change_low_pp"), g.get("accuracy_change_high_pp")),
        )
    print_wide(table)
    if gains:
        base = next(iter(gains.values()))["base_trial"]
        console.print(f"gains against the base (uncompressed, trial {base}); ~: estimated latency")
