"""Plotly figures of an analysis: gate weights, label probabilities over turns, one turn's votes,
and confusion matrices."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ui.results import EXPERTS, MODEL_TITLES, unavailable_reason

EXPERT_COLOURS = {"speech": "#1f77b4", "text": "#ff7f0e", "cross": "#2ca02c"}
_HEIGHT = 320


def _notice(fig: go.Figure, text: str, **where) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, **where)
    return fig


def gate_chart(doc: dict) -> go.Figure:
    """MiSTER-E's gate weights per turn, stacked (speech, text, cross)."""
    fig = go.Figure(layout={"title": "MiSTER-E gate weights per turn", "height": _HEIGHT, "barmode": "stack"})
    reason = unavailable_reason(doc, "mister_e")
    if reason is not None:
        return _notice(fig, f"not available: {reason}")
    turns = [t for t in doc["turns"] if "mister_e" in t]
    for expert in EXPERTS:
        fig.add_bar(
            name=expert,
            x=[t["index"] for t in turns],
            y=[t["mister_e"]["gate"][expert] for t in turns],
            marker_color=EXPERT_COLOURS[expert],
        )
    fig.update_layout(xaxis_title="turn", yaxis_title="weight", yaxis_range=[0, 1])
    return fig


def probability_timelines(doc: dict) -> go.Figure:
    """Both models' label probabilities over the turns, one heatmap per model."""
    labels = doc["labels"]
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12, subplot_titles=list(MODEL_TITLES.values())
    )
    for row, key in enumerate(MODEL_TITLES, start=1):
        reason = unavailable_reason(doc, key)
        if reason is not None:
            fig.add_annotation(
                text=f"not available: {reason}",
                showarrow=False,
                row=row,
                col=1,
                xref="x domain",
                yref="y domain",
                x=0.5,
                y=0.5,
            )
            continue
        turns = [t for t in doc["turns"] if key in t]
        z = [[t[key]["probs"][label] for t in turns] for label in labels]
        fig.add_heatmap(
            z=z,
            x=[t["index"] for t in turns],
            y=labels,
            zmin=0,
            zmax=1,
            coloraxis="coloraxis",
            row=row,
            col=1,
        )
    fig.update_layout(
        height=2 * _HEIGHT,
        coloraxis={"colorscale": "Viridis", "cmin": 0, "cmax": 1},
        title="Label probabilities over turns",
    )
    fig.update_xaxes(title_text="turn", row=2, col=1)
    return fig


def turn_distributions(doc: dict, index: int) -> go.Figure:
    """For one turn: the three experts' votes, MiSTER-E's mix and FARCER's distribution."""
    labels, turn = doc["labels"], doc["turns"][index]
    fig = go.Figure(
        layout={"title": f"Turn {index}: what each model voted", "height": _HEIGHT, "barmode": "group"}
    )
    series: list[tuple[str, dict | None, str | None]] = []
    mister = turn.get("mister_e")
    if mister is not None:
        series += [(f"{e} expert", mister["experts"][e], EXPERT_COLOURS[e]) for e in EXPERTS]
        series.append(("MiSTER-E", mister["probs"], "#9467bd"))
    if turn.get("farcer") is not None:
        series.append(("FARCER", turn["farcer"]["probs"], "#d62728"))
    for name, probs, colour in series:
        if probs is not None:
            fig.add_bar(name=name, x=labels, y=[probs[label] for label in labels], marker_color=colour)
    if not series:
        _notice(
            fig,
            "no model output for this turn: "
            + "; ".join(f"{title} not available" for key, title in MODEL_TITLES.items() if key not in turn),
        )
    fig.update_layout(yaxis_range=[0, 1], yaxis_title="probability")
    return fig


def confusion_chart(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], rows: str, cols: str
) -> go.Figure:
    """A labelled confusion-matrix heatmap (rows: `rows` rater, columns: `cols` rater)."""
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(labels),
            y=list(labels),
            colorscale="Blues",
            text=matrix,
            texttemplate="%{text}",
            showscale=False,
        )
    )
    rows, cols = html.escape(rows), html.escape(cols)  # plotly renders a subset of HTML in titles
    fig.update_layout(
        title=f"{rows} (rows) vs {cols} (columns)",
        height=_HEIGHT + 60,
        xaxis_title=cols,
        yaxis_title=rows,
        yaxis_autorange="reversed",
    )
    return fig
