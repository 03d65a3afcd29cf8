"""`python -m backend.analyze`: inputs are checked before any model loads, and `--dialogue ID` picks one
dialogue of a MELD CSV that holds several."""

from __future__ import annotations

import json

import pytest

from backend import analyze as analyze_module
from backend.analyze import analyze, main
from backend.errors import InputError

MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"


def _meld_row(number: int, text: str, speaker: str, dialogue: int, utterance: int, start: str, end: str) -> str:
    return f'{number},"{text}",{speaker},neutral,neutral,{dialogue},{utterance},1,1,"{start}","{end}"'


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("models were loaded before the inputs were checked")

    monkeypatch.setattr(analyze_module, "load_predictors", refuse)


def test_bad_inputs_are_reported_before_models_load(dialogue, tmp_path, data_dir, no_model_loading):
    video, subtitles = dialogue
    with pytest.raises(InputError, match="notes.mp4"):
        not_a_video = tmp_path / "notes.mp4"
        not_a_video.write_text("hello")
        analyze(not_a_video, subtitles=subtitles)
    with pytest.raises(InputError, match="missing.srt: file not found"):
        analyze(video, subtitles=tmp_path / "missing.srt")
    with pytest.raises(InputError, match="missing.csv: file not found"):
        analyze(video, transcript=tmp_path / "missing.csv")


def test_dialogue_option_picks_one_dialogue_of_a_meld_csv(dialogue, tmp_path, data_dir, models, capsys):
    video, _ = dialogue
    csv = tmp_path / "meld.csv"
    rows = [
        _meld_row(1, "First talk.", "Joey", 4, 0, "00:00:00,300", "00:00:01,500"),
        _meld_row(2, "Hi there.", "Rachel", 5, 0, "00:00:00,300", "00:00:01,500"),
        _meld_row(3, "Hello!", "Ross", 5, 1, "00:00:02,000", "00:00:03,400"),
    ]
    csv.write_text("\n".join([MELD_HEADER, *rows]) + "\n", encoding="utf-8")
    assert main([str(video), "--transcript", str(csv)]) == 2
    assert "holds 2 dialogues; choose one Dialogue_ID: 4, 5" in capsys.readouterr().err
    out = tmp_path / "analysis.json"
    assert main([str(video), "--transcript", str(csv), "--dialogue", "5", "--out", str(out)]) == 0
    turns = json.loads(out.read_text())["turns"]
    assert [(t["speaker"], t["text"]) for t in turns] == [("Rachel", "Hi there."), ("Ross", "Hello!")]
    assert main([str(video), "--transcript", str(csv), "--dialogue", "9"]) == 2
    assert "no dialogue with Dialogue_ID 9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(video), "--dialogue", "5"])
    assert "--dialogue needs --transcript" in capsys.readouterr().err
