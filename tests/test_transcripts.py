"""Turn sources and validation, on small files written in tmp_path (plus the real MELD dev CSV)."""
from __future__ import annotations

import csv

import pandas as pd
import pytest

from backend.dialogue import Turn
from backend.errors import InputError
from backend.text import clean_text
from backend.transcripts import (
    read_meld_csv,
    read_subtitles,
    read_transcript_csv,
    read_turns,
    turns_from_table,
    validate_turns,
)

SRT = """1
00:00:01,000 --> 00:00:02,500
Rachel: Hi, <i>you</i>!

2
00:00:03,000 --> 00:00:05,000 X1:10 X2:20
No name here,
on two lines.
"""

VTT = """WEBVTT
Kind: captions

NOTE a comment --- ignored

intro
00:01.000 --> 00:02.000 align:start position:10%
<v Roger Bingham>We are in <b>New York</b> &amp; more

00:00:03.500 --> 00:00:04.000
<v.loud Esme>It's great
</v>
"""

MELD_HEADER = (
    "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
)
MELD_ROWS = (
    '1,"Oh my God, he’s lost it.",Phoebe,sadness,negative,0,0,4,7,"00:20:57,256","00:21:00,049"\n'
    '2,What?,Monica,surprise,negative,0,1,4,7,"0:21:01,927","0:21:03,261"\n'
    '3,I\x92m fine,Ross,neutral,neutral,5,0,4,4,"00:12:24,660","00:12:30,915"\n'
)


def _write(tmp_path, name: str, text: str, encoding: str = "utf-8", newline: str = "\n"):
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


def _message(func, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        func(*args, **kwargs)
    return str(info.value)


# --- subtitles -------------------------------------------------------------------------------------


def test_srt_with_bom_and_crlf(tmp_path):
    path = _write(tmp_path, "talk.srt", SRT, encoding="utf-8-sig", newline="\r\n")
    assert read_subtitles(path) == [
        Turn("Rachel", 1.0, 2.5, "Hi, you!"),
        Turn("Speaker", 3.0, 5.0, "No name here, on two lines."),
    ]


def test_blank_line_inside_a_cue_continues_its_text(tmp_path):
    path = _write(tmp_path, "gap.srt", "1\n00:00:00,000 --> 00:00:01,000\nJoey: first\n\nsecond\n")
    assert read_subtitles(path) == [Turn("Joey", 0.0, 1.0, "first second")]


def test_cp1252_srt(tmp_path):
    text = "1\n00:00:00,500 --> 00:00:01,000\nUn café, s’il vous plaît\n"
    path = _write(tmp_path, "old.srt", text, encoding="cp1252")
    assert read_subtitles(path)[0].text == "Un café, s'il vous plaît"


def test_utf16_vtt_with_voice_tags_and_settings(tmp_path):
    path = _write(tmp_path, "talk.txt", VTT, encoding="utf-16")
    assert read_subtitles(path) == [
        Turn("Roger Bingham", 1.0, 2.0, "We are in New York & more"),
        Turn("Esme", 3.5, 4.0, "It's great"),
    ]


def test_read_turns_sniffs_subtitles_by_content(tmp_path):
    assert read_turns(_write(tmp_path, "subs.csv", VTT))[1].speaker == "Esme"
    assert read_turns(_write(tmp_path, "subs.vtt", SRT))[0].speaker == "Rachel"


def test_undecodable_file_asks_for_utf8(tmp_path):
    path = tmp_path / "bad.srt"
    path.write_bytes(b"1\n00:00:00,000 --> 00:00:01,000\nbad \x81\x8d byte\n")
    assert "save the file as UTF-8" in _message(read_subtitles, path)
    path.write_bytes("1\n".encode("utf-16") + b"\x00")  # UTF-16 cut mid-character
    assert "save the file as UTF-8" in _message(read_subtitles, path)
    path.write_bytes("1\n00:00:00,000 --> 00:00:01,000\nhi\n".encode("utf-16-le"))
    assert "UTF-16 without a BOM" in _message(read_subtitles, path)


@pytest.mark.parametrize(
    "body, expected",
    [
        ("1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:05,000 --> 00:00:04,000\nreversed\n",
         "back.srt:6 (cue 2): the end (4 s) is before the start (5 s)"),
        ("1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03,000 --> 00:00:04,000\n<i></i>\n",
         "back.srt:6 (cue 2): the text is empty"),
        ("1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n-00:00:03,000 --> 00:00:04,000\nneg\n",
         "back.srt:6 (cue 2): times cannot be negative"),
        ("1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03 --> soon\nbad\n",
         "back.srt:6 (cue 2): cannot read the cue timing"),
        ("just some text\nwithout cues\n", "back.srt:1: expected a cue timing line"),
    ],
)
def test_bad_subtitle_cues_name_line_and_cue(tmp_path, body, expected):
    assert expected in _message(read_subtitles, _write(tmp_path, "back.srt", body))


# --- MELD CSV --------------------------------------------------------------------------------------


def test_meld_csv_one_dialogue_rebased_and_cleaned(tmp_path):
    path = _write(tmp_path, "meld.csv", MELD_HEADER + MELD_ROWS)
    turns = read_meld_csv(path, dialogue_id=0)
    assert turns == [
        Turn("Phoebe", 0.0, 2.793, "Oh my God, he's lost it.", "sadness"),
        Turn("Monica", 4.671, 6.005, "What?", "surprise"),
    ]
    assert read_meld_csv(path, dialogue_id=5)[0].text == "I'm fine"


def test_meld_csv_dialogue_choice_lists_ids(tmp_path):
    path = _write(tmp_path, "meld.csv", MELD_HEADER + MELD_ROWS)
    assert "holds 2 dialogues; choose one Dialogue_ID: 0, 5" in _message(read_meld_csv, path)
    assert "no dialogue with Dialogue_ID 3; available: 0, 5" in _message(read_meld_csv, path, 3)
    assert "choose one Dialogue_ID" in _message(read_turns, path)
    assert read_turns(path, dialogue_id=5)[0].speaker == "Ross"


def test_meld_csv_bad_rows_name_the_line(tmp_path):
    bad_label = MELD_HEADER + '1,Hi,Joey,bored,neutral,0,0,1,1,"00:00:01,000","00:00:02,000"\n'
    message = _message(read_meld_csv, _write(tmp_path, "m.csv", bad_label))
    assert message.startswith("m.csv:2: unknown emotion label 'bored'")
    bad_time = MELD_HEADER + MELD_ROWS + '4,Hi,Joey,joy,positive,0,2,1,1,"00:21:04","later"\n'
    message = _message(read_meld_csv, _write(tmp_path, "m.csv", bad_time), 0)
    assert "m.csv:5: cannot read the time 'later'" in message


def test_meld_csv_missing_columns_listed(tmp_path):
    path = _write(tmp_path, "m.csv", "Utterance,Speaker,Dialogue_ID\nHi,Joey,0\n")
    message = _message(read_meld_csv, path)
    assert "missing MELD column(s) Emotion, Utterance_ID, StartTime, EndTime" in message
    assert "found Utterance, Speaker, Dialogue_ID" in message


def test_real_meld_dev_dialogue_0(meld_dir):
    path = meld_dir / "dev_sent_emo.csv"
    with path.open(encoding="utf-8") as handle:
        first = next(csv.DictReader(handle))
    turns = read_meld_csv(path, dialogue_id=0)
    assert turns[0].speaker == first["Speaker"]
    assert turns[0].text == clean_text(first["Utterance"])
    assert turns[0].label == first["Emotion"]
    assert turns[0].start == 0.0 and all(t.end >= t.start for t in turns)


# --- generic CSV and the UI table ------------------------------------------------------------------


def test_transcript_csv_seconds_and_timestamps(tmp_path):
    text = 'Speaker,Start,End,Text,Label\nAnn,0.5,1.25,Hello,happy\nBob,"00:00:02,000",00:00:03.5,“Hi”,\n'
    path = _write(tmp_path, "t.csv", text)
    expected = [Turn("Ann", 0.5, 1.25, "Hello", "joy"), Turn("Bob", 2.0, 3.5, '"Hi"')]
    assert read_transcript_csv(path) == expected
    assert read_turns(path) == expected
    assert read_transcript_csv(path, labels=("happiness", "neutral"))[0].label == "happiness"


@pytest.mark.parametrize(
    "row, expected",
    [
        ("Ann,2,1,Hello", "t.csv:3: the end (1 s) is before the start (2 s)"),
        ("Ann,1,2,", "t.csv:3: the text is empty"),
        ("Ann,,2,Hello", "t.csv:3: the start or end time is missing"),
        ("Ann,-1,2,Hello", "t.csv:3: times cannot be negative"),
        ("Ann,1,2,Hello,meh", "t.csv:3: unknown emotion label 'meh'"),
    ],
)
def test_transcript_csv_bad_rows(tmp_path, row, expected):
    path = _write(tmp_path, "t.csv", f"speaker,start,end,text,label\nBob,0,1,ok\n{row}\n")
    assert expected in _message(read_transcript_csv, path)


def test_transcript_csv_missing_columns(tmp_path):
    message = _message(read_transcript_csv, _write(tmp_path, "t.csv", "who,text\nAnn,Hi\n"))
    assert "missing column(s) speaker, start, end" in message and "found who, text" in message


def test_unrecognised_file(tmp_path):
    assert "not a recognised turn file" in _message(read_turns, _write(tmp_path, "x.csv", "a,b\n1,2\n"))


def test_table_rows_all_shapes_skip_blanks():
    expected = [Turn("Ann", 0.0, 1.0, "Hi"), Turn("Bob", 1.5, 2.0, "Yo", "anger")]
    lists = [["speaker", "start", "end", "text"], ["Ann", "0", "1", "Hi"], ["", "", "", ""],
             ["Bob", 1.5, "00:00:02,000", " Yo ", "angry"]]
    dicts = [{"Speaker": "Ann", "Start": 0, "End": 1, "Text": "Hi", "Label": None},
             {"Speaker": "", "Start": None, "End": None, "Text": "", "Label": ""},
             {"Speaker": "Bob", "Start": 1.5, "End": 2.0, "Text": "Yo", "Label": "anger"}]
    assert turns_from_table(lists) == expected
    assert turns_from_table(dicts) == expected
    assert turns_from_table(pd.DataFrame(dicts)) == expected
    assert turns_from_table([]) == []


def test_table_errors_name_the_row():
    rows = [["Ann", 0, 1, "Hi"], ["", "", "", ""], ["Bob", 3, 2, "Yo"]]
    assert _message(turns_from_table, rows).startswith("table row 3: the end (2 s) is before the start (3 s)")
    assert "table row 1: cannot read the time 'soon'" in _message(turns_from_table, [["Ann", "soon", 1, "x"]])
    assert "rows of speaker, start, end, text" in _message(turns_from_table, ["not a row"])


# --- validation ------------------------------------------------------------------------------------


def test_validate_sorts_clips_widens_and_warns():
    turns = [Turn("B", 4.0, 6.0, "late"), Turn("A", 1.0, 3.0, "first"), Turn("C", 2.5, 2.5, "blip")]
    cleaned, warnings = validate_turns(turns, duration_s=5.0, max_turns=10, source="subs.srt")
    assert cleaned == [Turn("A", 1.0, 3.0, "first"), Turn("C", 2.5, 3.0, "blip"), Turn("B", 4.0, 5.0, "late")]
    assert warnings == [
        "subs.srt: turn(s) 1 end after the media (5.00 s); clipped",
        "subs.srt: turn(s) 3 had no length; widened to 0.5 s",
        "subs.srt: overlapping turns (kept as they are): 2 and 3 by 0.50 s",
    ]


def test_validate_without_media_keeps_times():
    turns = [Turn("A", 0.0, 100.0, "long")]
    assert validate_turns(turns, None, 5, "t.csv") == (turns, [])


@pytest.mark.parametrize(
    "turns, expected",
    [
        ([], "t.csv: no turns found"),
        ([Turn("A", 0.0, 1.0, "x")] * 3, "t.csv has 3 turns but the limit is 2"),
        ([Turn("A", 0.0, 1.0, "x"), Turn("A", 2.0, 1.0, "x")], "t.csv, turn 2: the end (1 s) is before"),
        ([Turn("A", 0.0, 1.0, "x"), Turn("A", 1.0, 2.0, "")], "t.csv, turn 2: the text is empty"),
        ([Turn("A", -1.0, 1.0, "x")], "t.csv, turn 1: times cannot be negative"),
        ([Turn("A", None, 1.0, "x")], "t.csv, turn 1: the start or end time is missing"),
        ([Turn("A", 0.0, 1.0, "x"), Turn("A", 10.0, 12.0, "x")], "t.csv, turn 2: starts at 10.00 s, at or"),
    ],
)
def test_validate_errors(turns, expected):
    assert expected in _message(validate_turns, turns, 10.0, 2, "t.csv")


# --- encodings and malformed CSV ---------------------------------------------------------------------


def test_shift_jis_subtitles_are_read_as_japanese(tmp_path):
    text = (
        "1\n00:00:01,000 --> 00:00:02,000\n花子: こんにちは、元気ですか？\n\n"
        "2\n00:00:03,000 --> 00:00:04,000\nはい、ありがとう。\n"
    )
    path = _write(tmp_path, "ja.srt", text, encoding="shift_jis", newline="\r\n")
    assert read_subtitles(path) == [
        Turn("花子", 1.0, 2.0, "こんにちは、元気ですか？"),
        Turn("Speaker", 3.0, 4.0, "はい、ありがとう。"),
    ]


def test_other_legacy_encodings_are_refused_not_misread(tmp_path):
    text = "1\n00:00:01,000 --> 00:00:02,000\nПривет, как дела?\n"
    message = _message(read_subtitles, _write(tmp_path, "ru.srt", text, encoding="cp1251"))
    assert message.startswith("ru.srt: the text encoding is not recognised")
    assert "read as Windows-1252 it gives 'Ïðèâåò'" in message and "save the file as UTF-8" in message


def test_a_csv_cell_over_the_field_limit_names_its_line(tmp_path):
    text = "speaker,start,end,text\nAnn,0,1,Hi\nBob,1,2," + "x" * (200 * 1024) + "\n"
    message = _message(read_transcript_csv, _write(tmp_path, "t.csv", text))
    assert message.startswith("t.csv:3: a cell is longer than 128 KiB")


@pytest.mark.parametrize("reader", [read_transcript_csv, read_turns])
def test_an_unclosed_quote_is_refused_with_its_line(tmp_path, reader):
    text = 'speaker,start,end,text\nAnn,0,1,Hi\nBob,1,2,"Oh no\nAnn,2,3,Wait\nBob,3,4,What\n'
    message = _message(reader, _write(tmp_path, "t.csv", text))
    assert message.startswith("t.csv:3: a quoted cell that starts in this row is never closed")


def test_meld_csv_with_an_unclosed_quote_or_text_after_a_quote(tmp_path):
    unclosed = MELD_HEADER + MELD_ROWS + '4,"Hi,Joey,joy,positive,0,2,1,1,00:21:04.000,00:21:05.000\n'
    assert "m.csv:5: a quoted cell" in _message(read_meld_csv, _write(tmp_path, "m.csv", unclosed), 0)
    trailing = MELD_HEADER + '1,"Hi" there,Joey,joy,positive,0,0,1,1,"00:00:01,000","00:00:02,000"\n'
    message = _message(read_meld_csv, _write(tmp_path, "m.csv", trailing))
    assert message.startswith("m.csv:2: the row is not valid CSV") and "double every quote" in message


def test_a_nul_character_in_a_turn_is_refused():
    message = _message(turns_from_table, [["Ann", 0, 1, "Hi\x00there"]])
    assert message == "table row 1: the text contains a NUL character (U+0000); remove it"
    assert "the speaker contains a NUL" in _message(turns_from_table, [["A\x00nn", 0, 1, "Hi"]])
