"""An `erc.analysis/1` document as the page shows it: the per-turn table, the subtitle track, the
teaching view. Pure functions of the document; every piece of user text is escaped here."""

from __future__ import annotations

import html

import pandas as pd

from backend import registry
from backend.registry import ModelSpec, TurnField


TABLE_TEXT_CHARS = 60  # longer turn text is cut in the table; clicking the cell shows all of it


def table_widths() -> list[str]:
    """Column widths of the results table, in `table_columns` order: fixed for the short columns, so
    that every column fits a 1400 px page and the text takes the rest."""
    widths = ["36px", "124px", "84px", "auto"]
    for spec in registry.MODELS:
        widths += ["84px", "124px"]
        widths += ["172px" for f in spec.fields if f.kind == "weights"]
    return [*widths, "56px", "72px"]


def table_columns() -> list[str]:
    """The results table's columns: the turn, then each model's label, confidence and weights fields,
    then whether the models agree and the human label."""
    columns = ["#", "time", "speaker", "text"]
    for spec in registry.MODELS:
        columns += [spec.title, f"{spec.title} conf."]
        columns += [f"{f.title} {'/'.join(f.over)}" for f in spec.fields if f.kind == "weights"]
    return [*columns, "agree", "human"]


def unavailable_reason(doc: dict, key: str) -> str | None:
    """None when model `key` ran, else why not (its loader's warning)."""
    if key in doc.get("models", {}):
        return None
    prefix = f"{registry.model_spec(key).title}: "
    reason = next((w for w in doc["warnings"] if w.startswith(prefix)), None)
    return reason[len(prefix) :] if reason else f"{prefix}did not run for this analysis"


def model_status_html(doc: dict) -> str:
    """One line per model: its name and version, or 'not available: <reason>'."""
    lines = []
    for spec in registry.MODELS:
        reason = unavailable_reason(doc, spec.key)
        if reason is None:
            info = doc["models"][spec.key]
            parts = ", ".join(f"{k} {v}" for k, v in info.get("components", {}).items() if k != spec.name)
            lines.append(
                f"<li><b>{spec.title}</b>: version {html.escape(str(info['version']))}"
                + (f" <small>({html.escape(parts)})</small>" if parts else "")
                + "</li>"
            )
        else:
            lines.append(f"<li><b>{spec.title}</b>: not available: {html.escape(reason)}</li>")
    return f"<ul class='model-status'>{''.join(lines)}</ul>"


def warnings_html(doc: dict) -> str:
    items = "".join(f"<li>{html.escape(w)}</li>" for w in doc["warnings"])
    origin = "Reopened from the database (no recomputation)." if doc.get("reused") else "Analysed now."
    timing = f" Analysis took {doc['timings_s']['total']:.1f} s." if not doc.get("reused") else ""
    return f"<p>{origin}{timing}</p>" + (f"<ul class='warnings'>{items}</ul>" if items else "")


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}:{secs:04.1f}"


def _top(pred: dict | None) -> tuple[str, float | None]:
    if pred is None:
        return "n/a", None
    return pred["label"], round(float(pred["probs"][pred["label"]]), 3)


def results_table(doc: dict, human: dict[int, str] | None = None) -> pd.DataFrame:
    """One row per turn: time, speaker, text, each model's label, confidence and weights, whether the
    models agree, and the human label."""
    human = human or {}
    rows = []
    for turn in doc["turns"]:
        row = [turn["index"], f"{clock(turn['start'])}–{clock(turn['end'])}", turn["speaker"], turn["text"]]
        labels = []
        for spec in registry.MODELS:
            pred = turn.get(spec.key)
            label, conf = _top(pred)
            labels.append(label if pred is not None else None)
            row += [label, conf]
            for f in spec.fields:
                if f.kind == "weights":
                    row.append("/".join(f"{pred[f.name][e]:.2f}" for e in f.over) if pred else "n/a")
        agree = "n/a" if None in labels else ("yes" if len(set(labels)) == 1 else "no")
        rows.append([*row, agree, human.get(turn.get("turn_id"), "")])
    return pd.DataFrame(rows, columns=table_columns())


def _vtt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"


def predictions_vtt(doc: dict) -> str:
    """A WebVTT track: each turn's line and both models' predictions, shown while it is spoken."""
    cues = ["WEBVTT", ""]
    for turn in doc["turns"]:
        if turn["start"] is None or turn["end"] is None:
            continue
        said = f"{turn['speaker']}: {turn['text']}".strip().rstrip(":")
        verdicts = []
        for spec in registry.MODELS:
            label, conf = _top(turn.get(spec.key))
            verdicts.append(f"{spec.title} {label}" + (f" {conf:.0%}" if conf is not None else ""))
        text = html.escape(said, quote=False)  # WebVTT's escapes; also keeps "-->" out of the cue text
        cues += [f"{_vtt_time(turn['start'])} --> {_vtt_time(turn['end'])}", text, " · ".join(verdicts), ""]
    return "\n".join(cues)


def turn_choices(doc: dict) -> list[tuple[str, int]]:
    """Dropdown choices: '3 · 0:04.0 Ross: text…' -> turn index."""
    choices = []
    for turn in doc["turns"]:
        text = turn["text"] if len(turn["text"]) <= 40 else turn["text"][:39] + "…"
        choices.append((f"{turn['index']} · {clock(turn['start'])} {turn['speaker']}: {text}", turn["index"]))
    return choices


def _probs_line(probs: dict | None) -> str:
    if probs is None:
        return "<i>unavailable for this turn (weight 0)</i>"
    top = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{html.escape(k)} {v:.0%}" for k, v in top)


def _weighted_votes_html(pred: dict, weights: TurnField, votes: TurnField) -> str:
    """The teaching table of a mixture: each member's votes, its weight, and its share of the label."""
    label = pred["label"]
    rows = []
    for member in votes.over:
        dist, weight = pred[votes.name][member], pred[weights.name][member]
        vote = dist[label] if dist is not None else 0.0
        rows.append(
            f"<tr><td>{member}</td><td>{_probs_line(dist)}</td><td>{weight:.2f}</td>"
            f"<td>{weight:.2f} × {vote:.2f} = {weight * vote:.2f}</td></tr>"
        )
    return (
        f"<table class='teach'><tr><th>{html.escape(votes.title)}</th><th>top votes</th>"
        f"<th>{html.escape(weights.title)}</th><th>{html.escape(weights.title)} × vote for "
        f"{html.escape(label)}</th></tr>{''.join(rows)}</table>"
    )


def _prompt_html(segments: list[dict]) -> str:
    """The prompt with its image slots marked and the past labels it showed listed."""
    past = [s for s in segments if s["kind"] == "label"]
    listed = ", ".join(f"{html.escape(s.get('speaker', '?'))}: {html.escape(s.get('label', '?'))}" for s in past)
    pieces = [
        "<span class='image-slot'>[face image]</span>" if s["kind"] == "image" else html.escape(s["text"])
        for s in segments
    ]
    return f"<p>Past labels used: {listed or 'none'}</p><pre class='prompt'>{''.join(pieces)}</pre>"


def model_html(doc: dict, spec: ModelSpec, pred: dict | None) -> str:
    """How one model reached its label for one turn, from the fields its registry entry lists."""
    if pred is None:
        reason = unavailable_reason(doc, spec.key) or "no output for this turn"
        return f"<p>not available: {html.escape(reason)}</p>"
    label = pred["label"]
    parts = [
        f"<p>{html.escape(spec.explanation)} Label: <b>{html.escape(label)}</b> ({pred['probs'][label]:.0%}); "
        f"top: {_probs_line(pred['probs'])}.</p>"
    ]
    votes = spec.field("distributions")
    if votes is not None and votes.weighted_by:
        weights = next(f for f in spec.fields if f.name == votes.weighted_by)
        parts.append(_weighted_votes_html(pred, weights, votes))
    prompt = spec.field("segments")
    if prompt is not None:
        segments = pred.get(prompt.name)
        parts.append(_prompt_html(segments) if segments else "<p>The prompt was not recorded for this analysis.</p>")
    return "".join(parts)


def teaching_html(doc: dict, index: int) -> str:
    """How each model reached its label for turn `index`."""
    turn = doc["turns"][index]
    head = (
        f"<h4>Turn {turn['index']} · {html.escape(turn['speaker'])}"
        f" ({clock(turn['start'])}–{clock(turn['end'])})</h4>"
        f"<blockquote>{html.escape(turn['text']) or '<i>no text</i>'}</blockquote>"
    )
    models = "".join(f"<h5>{spec.title}</h5>{model_html(doc, spec, turn.get(spec.key))}" for spec in registry.MODELS)
    return f"<div class='teaching'>{head}{models}</div>"
