"""Silero VAD v6 (packaged ONNX) on a generated TTS dialogue, edge cases and real speech."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import soundfile as sf

from backend import vad
from backend.errors import InputError, ModelUnavailableError
from backend.media import load_audio
from backend.vad import HOP_S, regions_from_probabilities, speech_regions, voice_activity

SR = 16000


@pytest.fixture(scope="module")
def heard(spoken_dialogue):
    video, truth = spoken_dialogue
    return load_audio(video, SR), truth


def _edges_near(regions, truth, tol):
    """Every line starts at some region start and ends at some region end, within tol seconds."""
    starts, ends = np.array([a for a, _ in regions]), np.array([b for _, b in regions])
    return all(
        np.abs(starts - line.start).min() <= tol and np.abs(ends - line.end).min() <= tol for line in truth
    )


def test_regions_follow_the_spoken_lines(heard):
    audio, truth = heard
    regions = speech_regions(audio, SR)
    assert _edges_near(regions, truth, tol=0.15), (regions, truth)
    assert regions == sorted(regions) and all(a < b for a, b in regions)
    spoken = [(line.start - 0.1, line.end + 0.1) for line in truth]
    assert all(any(s <= a and b <= e for s, e in spoken) for a, b in regions), "speech found in a pause"


def test_probability_track_is_high_in_speech_and_low_in_pauses(heard):
    audio, truth = heard
    probs, hop = voice_activity(audio, SR)
    assert hop == HOP_S and probs.dtype == np.float32
    assert len(probs) == int(np.ceil(len(audio) / (hop * SR)))
    times = (np.arange(len(probs)) + 0.5) * hop
    speaking = np.zeros(len(probs), bool)
    for line in truth:
        speaking |= (times >= line.start) & (times <= line.end)
    assert probs[speaking].mean() > 0.8
    pause = np.zeros(len(probs), bool)
    for a, b in zip(truth, truth[1:]):
        if b.start - a.end >= 0.7:
            pause |= (times >= a.end + 0.15) & (times <= b.start - 0.15)
    assert pause.any() and probs[pause].mean() < 0.1


def test_level_rate_and_channels_do_not_matter(heard):
    audio, truth = heard
    assert _edges_near(speech_regions(0.05 * audio, SR), truth, tol=0.15)
    from scipy.signal import resample_poly

    at_44k = resample_poly(audio, 441, 160).astype(np.float32)
    assert _edges_near(speech_regions(np.stack([at_44k, at_44k], axis=1), 44100), truth, tol=0.15)


def test_silence_and_noise_have_no_speech():
    assert speech_regions(np.zeros(3 * SR, np.float32), SR) == []
    noise = np.random.default_rng(0).standard_normal(3 * SR).astype(np.float32) * 0.1
    assert speech_regions(noise, SR) == []
    assert speech_regions(np.zeros(10, np.float32), SR) == []


def test_hysteresis_on_a_probability_track():
    hop = 0.05
    probs = np.array([0, 0.6, 0.9, 0.4, 0.9, 0.1, 0.1, 0.1, 0.8, 0.1, 0.1, 0.1, 0.7, 0.7], np.float32)
    # 0.4 stays above OFF (no pause); three quiet frames (0.15 s) end a region; one loud frame is too short.
    assert regions_from_probabilities(probs, hop) == [(0.05, 0.25), (0.6, 0.7)]
    assert regions_from_probabilities(probs, hop, min_speech_s=0.0) == [(0.05, 0.25), (0.4, 0.45), (0.6, 0.7)]


def test_bad_input():
    with pytest.raises(InputError, match="non-empty"):
        speech_regions(np.zeros((2, 2, 2), np.float32), SR)
    with pytest.raises(InputError, match="sample rate"):
        voice_activity(np.zeros(SR, np.float32), 0)


def test_missing_onnxruntime_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    vad._silero.cache_clear()
    try:
        with pytest.raises(ModelUnavailableError, match="pip install onnxruntime"):
            speech_regions(np.zeros(SR, np.float32), SR)
    finally:
        vad._silero.cache_clear()


def test_real_speech_is_found(ravdess_dir):
    clips = sorted(ravdess_dir.glob("Actor_*/*.flac"))[::24]
    assert len(clips) >= 50
    for clip in clips:
        audio, sr = sf.read(clip, dtype="float32")
        regions = speech_regions(audio, sr)
        assert regions, f"no speech found in {clip.name}"
        # Each clip is one short sentence with silence before and after it.
        first, last = regions[0][0], regions[-1][1]
        assert 0.0 < first < last < len(audio) / sr
        assert 0.6 < last - first < 3.5, (clip.name, regions)
