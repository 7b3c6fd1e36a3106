"""Plotly figures drawn from the plain-data report info (report._get_report_info); no study access here."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from edgecompress.results.gains import BASE_LABEL
from edgecompress.study import attrs as A

ESTIMATED_LABEL = "latency estimated (no sub-8-bit kernels)"
FRONT_ALL_LABEL = "front: all trials (incl. estimated latency)"
FRONT_DEPLOYABLE_LABEL = "front: deployable (latency measured)"
_BASE_MARKER = {"symbol": "star", "size": 16, "color": "#d62728", "line": {"width": 1, "color": "#333333"}}
_STYLE = {  # category -> (label, colour, symbol measured, symbol estimated, size)
    "front": ("Pareto front", "#1f77b4", "circle", "diamond", 10),
    "dominated": ("dominated", "#a8a8a8", "circle", "diamond", 7),
    "infeasible": ("infeasible", "#d4d4d4", "x", "diamond-x", 7),
}


def _hover_text(hover: dict[str, Any]) -> str:
    return "<br>".join(f"{k}: {format_value(v)}" for k, v in hover.items())


def format_value(v: Any) -> str:
    """Readable cell text: 5 significant digits, whole numbers (MACs, bytes, bits) without '.0'."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}" if abs(v) >= 1e4 else str(int(v))
        return f"{v:.5g}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 1e4 else str(v)
    return str(v)


def _axis_order(info: dict[str, Any], i: int, j: int) -> tuple[int, int]:
    """Put a minimised objective (latency, size) on x and a maximised one (accuracy) on y."""
    objs = info["objectives"]
    if objs[i]["direction"] == "maximize" and objs[j]["direction"] == "minimize":
        return j, i
    return i, j


def front_figure(info: dict[str, Any]) -> go.Figure:
    """Every pair of objectives: front coloured, dominated/infeasible grey, estimated latency as diamonds."""
    objs = info["objectives"]
    if not info["pairs"]:
        return _single_objective_figure(info)
    pairs = info["pairs"]
    cols = min(3, len(pairs))
    rows = max(1, math.ceil(len(pairs) / cols))
    ordered = [_axis_order(info, i, j) for i, j in pairs]
    titles = [f"{objs[y]['name']} vs {objs[x]['name']}" for x, y in ordered]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.08)
    seen: set[str] = set()
    for k, (xi, yi) in enumerate(ordered):
        r, c = k // cols + 1, k % cols + 1
        _front_lines(fig, info, xi, yi, r, c, first=k == 0)
        for cat in ("infeasible", "dominated", "front"):
            label, colour, sym, sym_est, size = _STYLE[cat]
            for estimated in (False, True):
                pts = [p for p in info["points"] if p["category"] == cat and p["estimated"] == estimated]
                if not pts:
                    continue
                name = f"{label} · {ESTIMATED_LABEL}" if estimated else label
                fig.add_trace(
                    go.Scatter(
                        x=[p["values"][xi] for p in pts], y=[p["values"][yi] for p in pts],
                        mode="markers", name=name, legendgroup=name, showlegend=name not in seen,
                        marker={"color": colour, "symbol": sym_est if estimated else sym, "size": size,
                                "line": {"width": 1, "color": "#333333" if cat == "front" else colour}},
                        text=[_hover_text(p["hover"]) for p in pts],
                        hovertemplate="%{text}<extra></extra>",
                    ),
                    row=r, col=c,
                )
                seen.add(name)
        base = info.get("base")
        if base is not None and None not in (base["values"][xi], base["values"][yi]):
            fig.add_trace(_base_trace([base["values"][xi]], [base["values"][yi]], base, first=k == 0), row=r, col=c)
        fig.update_xaxes(title_text=objs[xi]["name"], row=r, col=c)
        fig.update_yaxes(title_text=objs[yi]["name"], row=r, col=c)
    fig.update_layout(height=460 * rows, title="Trials by objective (hover for every attribute)",
                      legend={"orientation": "h", "y": -0.15})
    return fig


def _base_trace(x: list[Any], y: list[Any], base: dict[str, Any], first: bool = True) -> go.Scatter:
    """The study's uncompressed trial as a star: the point every gain is measured against."""
    return go.Scatter(x=x, y=y, mode="markers", name=BASE_LABEL, legendgroup=BASE_LABEL, showlegend=first,
                      marker=_BASE_MARKER, text=[f"{BASE_LABEL}: trial {base['number']}"] * len(x),
                      hovertemplate="%{text}<extra></extra>")


def _front_lines(fig: go.Figure, info: dict[str, Any], xi: int, yi: int, r: int, c: int, first: bool) -> None:
    """Both fronts on one subplot: all trials (a step line through its points, when there are two objectives)
    and the deployable one (computed over measured-latency trials), each a named trace."""
    two = len(info["objectives"]) == 2
    for key, label, style in (("on_front", FRONT_ALL_LABEL, {"color": "#1f77b4", "width": 1}),
                              ("on_deployable_front", FRONT_DEPLOYABLE_LABEL,
                               {"color": "#2ca02c", "width": 2, "dash": "dash"})):
        pts = sorted((p for p in info["points"] if p.get(key)), key=lambda p: p["values"][xi])
        if not pts:
            continue
        deployable = key == "on_deployable_front"
        fig.add_trace(go.Scatter(
            x=[p["values"][xi] for p in pts], y=[p["values"][yi] for p in pts],
            mode=("lines+markers" if deployable else "lines") if two else "markers",
            line={**style, "shape": "hv"}, name=label, legendgroup=label, showlegend=first,
            marker={"symbol": "square-open", "size": 14, "color": style["color"]} if deployable else None,
            text=[f"trial {p['number']}" for p in pts], hovertemplate=f"{label}<br>%{{text}}<extra></extra>",
        ), row=r, col=c)


def _single_objective_figure(info: dict[str, Any]) -> go.Figure:
    """One objective: its value per trial number, with the same categories and hover."""
    fig = go.Figure()
    name = info["objectives"][0]["name"]
    for cat in ("infeasible", "dominated", "front"):
        label, colour, sym, sym_est, size = _STYLE[cat]
        pts = [p for p in info["points"] if p["category"] == cat]
        if pts:
            fig.add_trace(go.Scatter(
                x=[p["number"] for p in pts], y=[p["values"][0] for p in pts], mode="markers", name=label,
                marker={"color": colour, "size": size,
                        "symbol": [sym_est if p["estimated"] else sym for p in pts]},
                text=[_hover_text(p["hover"]) for p in pts], hovertemplate="%{text}<extra></extra>",
            ))
    base = info.get("base")
    if base is not None and base["values"][0] is not None:
        fig.add_trace(_base_trace([base["number"]], [base["values"][0]], base))
    fig.update_layout(height=420, title=f"{name} per trial", xaxis_title="trial number", yaxis_title=name)
    return fig


def parallel_figure(info: dict[str, Any]) -> go.Figure | None:
    """Parallel coordinates of the parameters and objectives of complete trials."""
    par = info["parallel"]
    if not par["dimensions"]:
        return None
    dims = []
    for d in par["dimensions"]:
        dim: dict[str, Any] = {"label": d["name"], "values": d["values"]}
        if d.get("ticktext"):
            dim["tickvals"] = list(range(len(d["ticktext"])))
            dim["ticktext"] = d["ticktext"]
        dims.append(dim)
    colour = par["color"]
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line={"color": colour["values"], "colorscale": "Viridis", "showscale": True,
                  "colorbar": {"title": {"text": colour["name"]}}},
        )
    )
    fig.update_layout(height=480, title=f"Parameters of complete trials (colour: {colour['name']})")
    return fig


def hypervolume_figure(info: dict[str, Any]) -> go.Figure | None:
    hv = info["hypervolume"]
    if not hv["numbers"]:
        return None
    ref = ", ".join(f"{o['name']}={v:.4g}" for o, v in zip(info["objectives"], hv["reference"], strict=True))
    fig = go.Figure(go.Scatter(x=hv["numbers"], y=hv["values"], mode="lines+markers", name="hypervolume"))
    base = info.get("base")
    if base is not None and base["number"] in hv["numbers"]:
        fig.add_trace(_base_trace([base["number"]], [hv["values"][hv["numbers"].index(base["number"])]], base))
    fig.update_layout(height=380, title=f"Hypervolume of feasible trials so far (reference: {ref})",
                      xaxis_title="trial number", yaxis_title="hypervolume")
    return fig


def importance_figure(info: dict[str, Any]) -> go.Figure | None:
    imp = info["importance"]
    if not imp:
        return None
    names = list(imp)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.15)
    for k, name in enumerate(names):
        items = sorted(imp[name].items(), key=lambda kv: kv[1])
        fig.add_trace(
            go.Bar(x=[v for _, v in items], y=[p for p, _ in items], orientation="h", showlegend=False),
            row=1, col=k + 1,
        )
    fig.update_layout(height=360, title="Parameter importance per objective (optuna.importance)")
    return fig


def cascade_figure(info: dict[str, Any]) -> go.Figure | None:
    cascade = info.get("cascade")
    if not cascade:
        return None
    fig = go.Figure(
        go.Scatter(
            x=[c["expected_latency_ms"] for c in cascade], y=[c["accuracy"] for c in cascade],
            mode="lines+markers", name="cascade",
            text=[_hover_text(c) for c in cascade], hovertemplate="%{text}<extra></extra>",
        )
    )
    single = info.get("single_models") or []
    if single:
        fig.add_trace(
            go.Scatter(
                x=[s["latency_ms"] for s in single], y=[s["accuracy"] for s in single], mode="markers",
                name="single models (Pareto front)", marker={"symbol": "circle-open", "size": 9},
                text=[f"trial {s['number']}" for s in single], hovertemplate="%{text}<extra></extra>",
            )
        )
    base = info.get("base")
    if base is not None and base.get("latency_ms") is not None and base.get("accuracy") is not None:
        fig.add_trace(_base_trace([base["latency_ms"]], [base["accuracy"]], base))
    fig.update_layout(height=400, title="Cascade: accuracy vs expected latency",
                      xaxis_title="expected latency (ms)", yaxis_title="accuracy")
    return fig


def fidelity_figure(info: dict[str, Any]) -> go.Figure | None:
    """Search (proxy) accuracy vs finalized accuracy, one point per config, with the y = x line."""
    fid = info.get("fidelity")
    if not fid or not fid.get("points"):
        return None
    pts = fid["points"]
    x = [p["proxy_accuracy"] for p in pts]
    y = [p["final_accuracy"] for p in pts]
    lo, hi = min(x + y), max(x + y)
    fig = go.Figure(go.Scatter(
        x=x, y=y, mode="markers", name="config", marker={"size": 10},
        text=[f"search trial {p[A.PROXY_TRIAL]} -> final trial {p['final_trial']}" for p in pts],
        hovertemplate="%{text}<br>proxy %{x:.4f}, final %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"dash": "dot"}))
    base = info.get("base")
    on_base = [p for p in pts if base is not None and p["final_trial"] == base["number"]]
    if on_base:
        fig.add_trace(_base_trace([p["proxy_accuracy"] for p in on_base], [p["final_accuracy"] for p in on_base],
                                  base))
    tau = fid.get("kendall_tau")
    title = "Search (proxy) vs finalized validation accuracy"
    if tau is not None:
        title += f" (Kendall tau {tau:.2f}, Spearman {fid.get('spearman'):.2f})"
    fig.update_layout(height=400, title=title, xaxis_title="search (proxy) accuracy",
                      yaxis_title="finalized accuracy")
    return fig
