"""The analysis pipeline end to end on a generated two-speaker video."""
import json

import pytest

from backend.analyze import analyze, main
from backend.errors import InputError
from backend.schema import validate_analysis
from backend.speakers import SAME_SPEAKER_PAUSE_S
from backend.synthetic_media import head_boxes, make_dialogue_video, make_silent_video

TURNS = [(0.3, 1.5), (2.0, 3.4), (4.0, 5.2)]
SRT = """1
00:00:00,300 --> 00:00:01,500
Rachel: Hi there.

2
00:00:02,000 --> 00:00:03,400
Ross: Oh, hello!

3
00:00:04,000 --> 00:00:05,200
Rachel: How are you?
"""


@pytest.fixture(scope="module")
def dialogue(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dialogue")
    video = make_dialogue_video(folder / "talk.mp4", TURNS, size=(640, 360), duration_s=6.0)
    subtitles = folder / "talk.srt"
    subtitles.write_text(SRT, encoding="utf-8")
    return video, subtitles


def _overlap(box, other) -> float:
    x, y, w, h = box
    ox, oy, ow, oh = other
    ix = max(0, min(x + w, ox + ow) - max(x, ox))
    iy = max(0, min(y + h, oy + oh) - max(y, oy))
    return ix * iy / (w * h)


def test_subtitled_video(dialogue, data_dir):
    video, subtitles = dialogue
    doc = analyze(video, subtitles=subtitles)
    validate_analysis(doc)
    assert [t["speaker"] for t in doc["turns"]] == ["Rachel", "Ross", "Rachel"]
    assert [t["text"] for t in doc["turns"]][1] == "Oh, hello!"
    assert doc["media"]["has_audio"] and doc["media"]["duration_s"] == pytest.approx(6.0, abs=0.1)
    assert len(doc["media"]["sha256"]) == 64
    heads = head_boxes((640, 360))
    for i, turn in enumerate(doc["turns"]):
        assert turn["face"]["found"]
        assert _overlap(turn["face"]["box"], heads[i % 2]) > 0.5, f"turn {i} took the wrong face"
    assert set(doc["timings_s"]) >= {"load", "media", "turns", "features", "total"}
    for key in doc["models"]:
        assert all(key in turn for turn in doc["turns"]), f"{key} did not label every turn"


def _expected_turns(truth, pause_s: float = SAME_SPEAKER_PAUSE_S) -> list[tuple[int, float, float]]:
    """(speaker, start, end) of the truth's lines, one speaker's lines merged across short pauses."""
    turns: list[list] = []
    for line in truth:
        if turns and turns[-1][0] == line.speaker and line.start - turns[-1][2] < pause_s:
            turns[-1][2] = line.end
        else:
            turns.append([line.speaker, line.start, line.end])
    return [tuple(t) for t in turns]


def test_speech_recognition_turns_get_speakers_from_faces(spoken_dialogue, data_dir):
    video, truth = spoken_dialogue
    doc = analyze(video)
    validate_analysis(doc)
    expected = _expected_turns(truth)
    # The quick replies (0.25 s and 0.3 s) are split by the change of speaking face, not by a pause.
    assert len(doc["turns"]) == len(expected)
    for turn, (_, start, end) in zip(doc["turns"], expected):
        assert abs(turn["start"] - start) <= 0.3 and abs(turn["end"] - end) <= 0.3
        assert turn["text"] and turn["face"]["found"]
    names = {}
    for turn, (speaker, _, _) in zip(doc["turns"], expected):
        names.setdefault(turn["speaker"], speaker)
    right = sum(names[t["speaker"]] == speaker for t, (speaker, _, _) in zip(doc["turns"], expected))
    assert len(set(names.values())) == len(names) == 2  # two speakers, one name each
    assert right >= 0.9 * len(expected)
    assert any("no transcript" in w and "subtitles" in w for w in doc["warnings"])


def test_transcript_table(dialogue, data_dir):
    video, _ = dialogue
    table = [["A", 0.3, 1.5, "one"], ["B", 2.0, 3.4, "two"]]
    doc = analyze(video, table=table)
    assert [(t["speaker"], t["text"]) for t in doc["turns"]] == [("A", "one"), ("B", "two")]


def test_silent_video_without_subtitles_is_a_clear_error(tmp_path, data_dir):
    video = make_silent_video(tmp_path / "silent.mp4", duration_s=1.0)
    with pytest.raises(InputError, match="no audio track.*subtitles"):
        analyze(video)


def test_subtitles_past_the_end_are_rejected(dialogue, tmp_path, data_dir):
    video, _ = dialogue
    late = tmp_path / "late.srt"
    late.write_text("1\n00:01:00,000 --> 00:01:02,000\nA: too late\n", encoding="utf-8")
    with pytest.raises(InputError, match="late.srt"):
        analyze(video, subtitles=late)


def test_cli_writes_json_and_reports_bad_input(dialogue, tmp_path, data_dir, capsys):
    video, subtitles = dialogue
    out = tmp_path / "analysis.json"
    assert main([str(video), "--subtitles", str(subtitles), "--out", str(out)]) == 0
    assert validate_analysis(json.loads(out.read_text()))["turns"][2]["text"] == "How are you?"
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("hello")
    assert main([str(not_a_video)]) == 2
    assert "error: notes.mp4" in capsys.readouterr().err
