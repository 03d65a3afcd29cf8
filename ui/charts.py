"""Plotly figures of an analysis: gate weights, label probabilities over turns, one turn's votes,
and confusion matrices."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from backend import registry
from ui.results import unavailable_reason

# Members of weights/distributions fields (MiSTER-E's experts); other names take the palette's colours.
MEMBER_COLOURS = {"speech": "#1f77b4", "text": "#ff7f0e", "cross": "#2ca02c"}
PALETTE = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_HEIGHT = 320


def _colour(name: str, i: int) -> str:
    return MEMBER_COLOURS.get(name, PALETTE[i % len(PALETTE)])


def _notice(fig: go.Figure, text: str, **where) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, **where)
    return fig


def _row_notice(fig: go.Figure, text: str, row: int) -> None:
    fig.add_annotation(
        text=text, showarrow=False, row=row, col=1, xref="x domain", yref="y domain", x=0.5, y=0.5
    )


def weights_chart(doc: dict) -> go.Figure:
    """Each weights field per turn, stacked (MiSTER-E's gate: speech, text, cross), one row per field."""
    fields = [(spec, f) for spec in registry.MODELS for f in spec.fields if f.kind == "weights"]
    titles = [f"{spec.title} {f.title} weights per turn" for spec, f in fields]
    fig = make_subplots(rows=max(len(fields), 1), cols=1, subplot_titles=titles or ["no model has weights"])
    for row, (spec, field) in enumerate(fields, start=1):
        reason = unavailable_reason(doc, spec.key)
        if reason is not None:
            _row_notice(fig, f"not available: {reason}", row)
            continue
        turns = [t for t in doc["turns"] if spec.key in t]
        for i, member in enumerate(field.over):
            fig.add_bar(
                name=member,
                x=[t["index"] for t in turns],
                y=[t[spec.key][field.name][member] for t in turns],
                marker_color=_colour(member, i),
                row=row,
                col=1,
            )
        fig.update_yaxes(title_text="weight", range=[0, 1], row=row, col=1)
    fig.update_layout(height=_HEIGHT * max(len(fields), 1), barmode="stack")
    fig.update_xaxes(title_text="turn")
    return fig


def probability_timelines(doc: dict) -> go.Figure:
    """Every model's label probabilities over the turns, one heatmap per model."""
    labels = doc["labels"]
    fig = make_subplots(
        rows=len(registry.MODELS), cols=1, shared_xaxes=True, vertical_spacing=0.12, subplot_titles=[m.title for m in registry.MODELS]
    )
    for row, spec in enumerate(registry.MODELS, start=1):
        reason = unavailable_reason(doc, spec.key)
        if reason is not None:
            _row_notice(fig, f"not available: {reason}", row)
            continue
        turns = [t for t in doc["turns"] if spec.key in t]
        z = [[t[spec.key]["probs"][label] for t in turns] for label in labels]
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
        height=len(registry.MODELS) * _HEIGHT,
        coloraxis={"colorscale": "Viridis", "cmin": 0, "cmax": 1},
        title="Label probabilities over turns",
    )
    fig.update_xaxes(title_text="turn", row=len(registry.MODELS), col=1)
    return fig


def turn_distributions(doc: dict, index: int) -> go.Figure:
    """For one turn: every model's distribution, and the members' votes of models that mix them."""
    labels, turn = doc["labels"], doc["turns"][index]
    fig = go.Figure(
        layout={"title": f"Turn {index}: what each model voted", "height": _HEIGHT, "barmode": "group"}
    )
    series: list[tuple[str, dict | None, str]] = []
    for spec in registry.MODELS:
        pred = turn.get(spec.key)
        if pred is None:
            continue
        votes = spec.field("distributions")
        if votes is not None:
            series += [
                (f"{member} {votes.title.split()[0]}", pred[votes.name][member], _colour(member, i))
                for i, member in enumerate(votes.over)
            ]
        series.append((spec.title, pred["probs"], spec.colour))
    for name, probs, colour in series:
        if probs is not None:
            fig.add_bar(name=name, x=labels, y=[probs[label] for label in labels], marker_color=colour)
    if not series:
        _notice(
            fig,
            "no model output for this turn: "
            + "; ".join(f"{spec.title} not available" for spec in registry.MODELS if spec.key not in turn),
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
