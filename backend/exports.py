"""Corrections out of the store: MELD-format CSV (one row per turn) and JSONL (everything, with history).

Both take the rows of `Store.annotations` (oldest first). A turn's exported label is its current label
(backend.current_label) among the rows given, so a filtered export (one annotator, one video) keeps its
meaning.
Text cells of the CSV are neutralised against spreadsheet formula injection.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable

from backend.current_label import current_annotation

MELD_HEADER = (
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
)
# In MELD's training split every emotion but surprise has a single sentiment (surprise is 614
# negative / 591 positive), so sentiment follows from the emotion except for surprise.
SENTIMENT = {
    "neutral": "neutral",
    "joy": "positive",
    "anger": "negative",
    "disgust": "negative",
    "fear": "negative",
    "sadness": "negative",
}
FORMATS = ("meld_csv", "jsonl", "corpus")  # corpus: backend.corpus_export
# A spreadsheet runs a cell starting with one of these as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_HISTORY_KEYS = ("annotation_id", "label", "annotator", "note", "created_at", "adjudicated", "is_current")


def meld_time(seconds: float | None) -> str:
    """`hh:mm:ss,mmm` as MELD writes it; empty when the time is unknown."""
    if seconds is None:
        return ""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{ms:03d}"


def spreadsheet_safe(text: str) -> str:
    """`text` with a `'` in front when a spreadsheet would read it as a formula (OWASP's advice); the
    quote shows as text in the cell, and the csv writer quotes cells that need it."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def by_turn(annotations: Iterable[dict]) -> list[list[dict]]:
    """The annotations grouped per turn (oldest first within a turn), turns in dialogue order."""
    groups: dict[int, list[dict]] = {}
    for row in annotations:
        groups.setdefault(row["turn_id"], []).append(row)
    return sorted(groups.values(), key=lambda rows: (rows[0]["dialogue_id"], rows[0]["index"]))


def meld_csv(annotations: Iterable[dict]) -> str:
    """One MELD row per annotated turn with its current label; unknown fields are empty."""
    out = io.StringIO()
    # CRLF as in MELD's own files (and RFC 4180); it also makes the writer quote a cell holding a bare CR.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(MELD_HEADER)
    for number, rows in enumerate(by_turn(annotations), start=1):
        turn, label = rows[-1], current_annotation(rows)["label"]
        writer.writerow(
            [
                number,
                spreadsheet_safe(turn["text"]),
                spreadsheet_safe(turn["speaker"]),
                label,
                SENTIMENT.get(label, ""),
                turn["dialogue_id"],
                turn["index"],
                "",
                "",
                meld_time(turn["start"]),
                meld_time(turn["end"]),
            ]
        )
    return out.getvalue()


def jsonl(annotations: Iterable[dict]) -> str:
    """One JSON object per annotated turn: the turn, the models' predictions, its label and history."""
    lines = []
    for rows in by_turn(annotations):
        turn, current = rows[-1], current_annotation(rows)
        record = {
            "dialogue_id": turn["dialogue_id"],
            "media_sha256": turn["media_sha256"],
            "turn_id": turn["turn_id"],
            "index": turn["index"],
            "speaker": turn["speaker"],
            "start": turn["start"],
            "end": turn["end"],
            "text": turn["text"],
            "label": current["label"],
            "annotator": current["annotator"],
            "predictions": turn["predictions"],
            "history": [{k: r[k] for k in _HISTORY_KEYS} for r in rows],
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)
