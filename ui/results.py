"""An `erc.analysis/1` document as the page shows it: the per-turn table, the subtitle track, the
teaching view. Pure functions of the document; every piece of user text is escaped here."""

from __future__ import annotations

import html
import re

import pandas as pd

from backend.faces import turn_face

MODEL_TITLES = {"mister_e": "MiSTER-E", "farcer": "FARCER"}
EXPERTS = ("speech", "text", "cross")
TABLE_COLUMNS = [
    "#",
    "time",
    "speaker",
    "text",
    "MiSTER-E",
    "MiSTER-E conf.",
    "gate speech/text/cross",
    "FARCER",
    "FARCER conf.",
    "agree",
    "human",
]
_IMAGE_SLOT = re.compile(r"<image:[^>]*>|<IMG>")
_PAST_LABEL = re.compile(r"\(([^()]*)'s current emotion: ([a-z]+)\)")


def unavailable_reason(doc: dict, key: str) -> str | None:
    """None when model `key` ran, else why not (its loader's warning)."""
    if key in doc.get("models", {}):
        return None
    title = MODEL_TITLES[key]
    return next((w for w in doc["warnings"] if title in w), f"{title} did not run for this analysis")


def model_status_html(doc: dict) -> str:
    """One line per model: its name and version, or 'not available: <reason>'."""
    lines = []
    for key, title in MODEL_TITLES.items():
        reason = unavailable_reason(doc, key)
        if reason is None:
            info = doc["models"][key]
            lines.append(
                f"<li><b>{title}</b>: {html.escape(info['name'])} {html.escape(str(info['version']))}</li>"
            )
        else:
            lines.append(f"<li><b>{title}</b>: not available: {html.escape(reason)}</li>")
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
    """One row per turn: time, speaker, text, both models' label and confidence, the gate, whether they
    agree, and the human label."""
    human = human or {}
    rows = []
    for turn in doc["turns"]:
        mister, farcer = turn.get("mister_e"), turn.get("farcer")
        m_label, m_conf = _top(mister)
        f_label, f_conf = _top(farcer)
        gate = "/".join(f"{mister['gate'][e]:.2f}" for e in EXPERTS) if mister else "n/a"
        agree = "n/a" if mister is None or farcer is None else ("yes" if m_label == f_label else "no")
        rows.append(
            [
                turn["index"],
                f"{clock(turn['start'])}–{clock(turn['end'])}",
                turn["speaker"],
                turn["text"],
                m_label,
                m_conf,
                gate,
                f_label,
                f_conf,
                agree,
                human.get(turn.get("turn_id"), ""),
            ]
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


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
        for key, title in MODEL_TITLES.items():
            label, conf = _top(turn.get(key))
            verdicts.append(f"{title} {label}" + (f" {conf:.0%}" if conf is not None else ""))
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


def face_crop(doc: dict, index: int):
    """The face crop FARCER saw for a turn (found again from the video), or None."""
    turn = doc["turns"][index]
    if not turn["face"]["found"]:
        return None
    face = turn_face(doc["media"]["path"], turn["start"], turn["end"])
    return face.crop if face.found else None


def _probs_line(probs: dict | None) -> str:
    if probs is None:
        return "<i>unavailable for this turn (weight 0)</i>"
    top = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{html.escape(k)} {v:.0%}" for k, v in top)


def _absent(doc: dict, key: str) -> str:
    reason = unavailable_reason(doc, key) or "no output for this turn"
    return f"<p>not available: {html.escape(reason)}</p>"


def _mister_e_html(doc: dict, pred: dict | None) -> str:
    if pred is None:
        return _absent(doc, "mister_e")
    label = pred["label"]
    rows = []
    for expert in EXPERTS:
        votes, weight = pred["experts"][expert], pred["gate"][expert]
        vote = votes[label] if votes is not None else 0.0
        rows.append(
            f"<tr><td>{expert}</td><td>{_probs_line(votes)}</td><td>{weight:.2f}</td>"
            f"<td>{weight:.2f} × {vote:.2f} = {weight * vote:.2f}</td></tr>"
        )
    return (
        f"<p>Each expert votes a distribution over the labels; the gate weighs the experts for this turn, "
        f"and the mix gives <b>{html.escape(label)}</b> ({pred['probs'][label]:.0%}).</p>"
        "<table class='teach'><tr><th>expert</th><th>top votes</th><th>gate</th>"
        f"<th>gate × vote for {html.escape(label)}</th></tr>{''.join(rows)}</table>"
    )


def _farcer_html(doc: dict, pred: dict | None) -> str:
    if pred is None:
        return _absent(doc, "farcer")
    parts = [
        f"<p>FARCER reads the dialogue up to this turn, with a projected face embedding in each image slot, "
        f"and scores every label as the answer: <b>{html.escape(pred['label'])}</b> "
        f"({pred['probs'][pred['label']]:.0%}); next: {_probs_line(pred['probs'])}.</p>"
    ]
    prompt = pred.get("prompt")
    if prompt:
        past = _PAST_LABEL.findall(prompt)
        listed = ", ".join(f"{html.escape(s)}: {html.escape(lab)}" for s, lab in past) or "none"
        parts.append(f"<p>Past labels used: {listed}</p>")
        pieces = _IMAGE_SLOT.split(prompt)
        marked = "<span class='image-slot'>[face image]</span>".join(html.escape(p) for p in pieces)
        parts.append(f"<pre class='prompt'>{marked}</pre>")
    else:
        parts.append("<p>The prompt was not recorded for this analysis.</p>")
    return "".join(parts)


def teaching_html(doc: dict, index: int) -> str:
    """How each model reached its label for turn `index`."""
    turn = doc["turns"][index]
    head = (
        f"<h4>Turn {turn['index']} · {html.escape(turn['speaker'])}"
        f" ({clock(turn['start'])}–{clock(turn['end'])})</h4>"
        f"<blockquote>{html.escape(turn['text']) or '<i>no text</i>'}</blockquote>"
    )
    return (
        f"<div class='teaching'>{head}<h5>MiSTER-E</h5>{_mister_e_html(doc, turn.get('mister_e'))}"
        f"<h5>FARCER</h5>{_farcer_html(doc, turn.get('farcer'))}</div>"
    )
