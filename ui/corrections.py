"""Gradio handlers of the corrections view: filter, agreement with confusion matrices, export."""

from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from backend.errors import InputError
from backend.service import Service
from ui import charts
from ui.callbacks import stored_label, user_error, viewer_name

CORRECTION_COLUMNS = ["time", "dialogue", "turn", "speaker", "text", "annotator", "label", "note", "current"]


def _kappa(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def agreement_html(report: dict) -> str:
    """Kappas as a small HTML report (names escaped)."""
    parts = [f"<p>{report['turns']} labelled turns, {len(report['annotators'])} annotators.</p>"]
    if report["pairs"]:
        rows = "".join(
            f"<tr><td>{html.escape(p['a'])}</td><td>{html.escape(p['b'])}</td><td>{p['n']}</td>"
            f"<td>{_kappa(p['kappa'])}</td></tr>"
            for p in report["pairs"]
        )
        parts.append(
            f"<h5>Cohen's kappa</h5><table><tr><th>a</th><th>b</th><th>shared turns</th>"
            f"<th>kappa</th></tr>{rows}</table>"
        )
    else:
        parts.append("<p>Cohen's kappa needs two annotators who labelled the same turns.</p>")
    if report["fleiss"] is not None:
        fleiss = report["fleiss"]
        parts.append(
            f"<h5>Fleiss' kappa</h5><p>{_kappa(fleiss['kappa'])} over {fleiss['n']} turns with "
            f"two or more of the {len(fleiss['annotators'])} annotators.</p>"
        )
    if report["models"]:
        rows = "".join(
            f"<tr><td>{html.escape(m['a'])}</td><td>{m['n']}</td><td>{_kappa(m['kappa'])}</td>"
            f"<td>{'' if m['agreement'] is None else format(m['agreement'], '.1%')}</td></tr>"
            for m in report["models"]
        )
        parts.append(
            "<h5>Models vs the humans' current labels</h5><table><tr><th>model</th><th>turns</th>"
            f"<th>kappa</th><th>agreement</th></tr>{rows}</table>"
        )
    if report.get("per_annotator"):
        parts.append(summary_html(report["per_annotator"]))
    return "".join(parts)


def _share(entry: dict) -> str:
    return "–" if entry["agreement"] is None else f"{entry['agreement']:.1%} of {entry['n']}"


def summary_html(rows: list[dict]) -> str:
    """Per annotator: saves, turns, agreement with the others and with each model."""
    models = sorted({m for r in rows for m in r["models"]})
    head = "".join(f"<th>with {html.escape(m)}</th>" for m in models)
    body = "".join(
        f"<tr><td>{html.escape(r['annotator'])}</td><td>{r['saves']}</td><td>{r['turns']}</td>"
        f"<td>{_share(r['others'])}</td>"
        + "".join(f"<td>{_share(r['models'][m])}</td>" for m in models)
        + "</tr>"
        for r in rows
    )
    return (
        "<h5>Per annotator (agreement on each one's latest labels)</h5><table class='per-annotator'><tr>"
        f"<th>annotator</th><th>saves</th><th>turns</th><th>with the others</th>{head}</tr>{body}</table>"
    )


def pair_key(pair: dict) -> str:
    return f"{pair['a']} vs {pair['b']}"


def corrections_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            [
                r["created_at"][:19].replace("T", " "),
                r["dialogue_id"],
                r["index"],
                r["speaker"],
                r["text"],
                r["annotator"],
                r["label"],
                r["note"],
                "yes" if r["is_current"] else "",
            ]
            for r in rows
        ],
        columns=CORRECTION_COLUMNS,
    )


class Corrections:
    def __init__(self, service: Service) -> None:
        self.service = service

    def filters(
        self, dialogue_id: int | None = None, annotator: str | None = None
    ) -> tuple[gr.Dropdown, gr.Dropdown]:
        """Choices for the dialogue and annotator filters, from what is stored now; the values chosen
        stay while they are still choices (the filters refresh after every save and analysis)."""
        dialogues = [(stored_label(d), d["dialogue_id"]) for d in self.service.dialogues()]
        annotators = sorted({r["annotator"] for r in self.service.annotations()})
        keep_dialogue = dialogue_id if dialogue_id in {value for _, value in dialogues} else None
        return (
            gr.Dropdown(choices=dialogues, value=keep_dialogue),
            gr.Dropdown(choices=annotators, value=annotator if annotator in annotators else None),
        )

    def show(
        self,
        dialogue_id: int | None,
        annotator: str | None,
        label: str | None,
        pair_choice: str | None,
        model_choice: str | None,
        name: str | None,
        user: gr.OAuthProfile | None,
    ) -> tuple:
        """(corrections, agreement report, the chosen annotator pair's confusion, the chosen model's
        confusion with the humans, the pair picker, the model picker). The first pair or model with
        shared turns is shown when none is chosen, or the choice is gone. In blind mode an annotator
        sees their own labels only."""
        viewer = viewer_name(name, user)
        try:
            rows = self.service.annotations(dialogue_id, annotator, label, viewer)
            report = self.service.agreement(dialogue_id, annotator, label, viewer)
        except InputError as exc:
            raise user_error(exc) from None
        labels = report["labels"]
        pairs = {pair_key(p): p for p in report["pairs"] if p["n"]}
        models = {m["a"]: m for m in report["models"] if m["n"]}
        pair = pairs.get(pair_choice) or next(iter(pairs.values()), None)
        model = models.get(model_choice) or next(iter(models.values()), None)
        return (
            corrections_frame(rows),
            agreement_html(report),
            charts.confusion_chart(pair["confusion"], labels, pair["a"], pair["b"]) if pair else None,
            charts.confusion_chart(model["confusion"], labels, model["a"], "humans") if model else None,
            gr.Dropdown(choices=list(pairs), value=pair_key(pair) if pair else None),
            gr.Dropdown(choices=list(models), value=model["a"] if model else None),
        )

    def export(
        self,
        fmt: str,
        dialogue_id: int | None,
        annotator: str | None,
        label: str | None,
        name: str | None,
        user: gr.OAuthProfile | None,
    ) -> str:
        try:
            return str(self.service.export(fmt, dialogue_id, annotator, label, viewer_name(name, user)))
        except InputError as exc:
            raise user_error(exc) from None
