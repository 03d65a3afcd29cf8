import numpy as np
import pytest
import soundfile as sf

from backend.errors import InputError
from backend.media import load_audio
from backend.synthetic_media import make_dialogue_video, speech_like_audio
from backend.vad import vad_turns

SR = 16000


def _irregular_turns(n, seed):
    rng = np.random.default_rng(seed)
    turns, t = [], 0.3
    for _ in range(n):
        length, gap = rng.uniform(0.5, 3.0), rng.uniform(0.5, 1.5)
        turns.append((round(t, 2), round(t + length, 2)))
        t += length + gap
    return turns, t + 0.5


def _assert_recovered(found, expected, tol=0.2):
    assert len(found) == len(expected), [(t.start, t.end) for t in found]
    for turn, (start, end) in zip(found, expected):
        assert turn.start == pytest.approx(start, abs=tol) and turn.end == pytest.approx(end, abs=tol)


def test_recovers_tone_turns():
    turns, duration = _irregular_turns(12, seed=3)
    found = vad_turns(speech_like_audio(turns, duration, SR, seed=3), SR)
    _assert_recovered(found, turns)
    assert all(t.speaker == "SPEAKER_1" and t.text == "" and t.label is None for t in found)


def test_threshold_adapts_to_the_level():
    turns, duration = _irregular_turns(6, seed=4)
    quiet = 0.05 * speech_like_audio(turns, duration, SR, seed=4)
    _assert_recovered(vad_turns(quiet, SR), turns)


def test_recovers_turns_from_a_video_soundtrack(tmp_path):
    turns = [(0.3, 1.2), (1.8, 2.4), (3.0, 4.1)]
    video = make_dialogue_video(tmp_path / "talk.mp4", turns, duration_s=4.6, size=(160, 96))
    _assert_recovered(vad_turns(load_audio(video, SR), SR), turns)


def test_short_pauses_are_bridged_and_blips_dropped():
    audio = speech_like_audio([(0.5, 1.5), (1.7, 2.5), (3.5, 3.6)], 4.5, SR)
    _assert_recovered(vad_turns(audio, SR), [(0.5, 2.5)])
    _assert_recovered(vad_turns(audio, SR, min_silence_s=0.1), [(0.5, 1.5), (1.7, 2.5)])


def test_silence_and_flat_noise_have_no_turns():
    assert vad_turns(np.zeros(3 * SR, np.float32), SR) == []
    noise = np.random.default_rng(0).standard_normal(3 * SR).astype(np.float32) * 0.1
    assert vad_turns(noise, SR) == []
    assert vad_turns(np.zeros(10, np.float32), SR) == []


def test_bad_input():
    with pytest.raises(InputError, match="mono"):
        vad_turns(np.zeros((2, SR), np.float32), SR)
    with pytest.raises(InputError, match="Sample rate"):
        vad_turns(np.zeros(SR, np.float32), 0)


def test_real_speech_is_one_turn_per_sentence(ravdess_dir):
    clips = sorted(ravdess_dir.glob("Actor_*/*.flac"))[::24]
    assert len(clips) >= 50
    single = 0
    for clip in clips:
        audio, sr = sf.read(clip, dtype="float32")
        turns = vad_turns(audio, sr)
        assert turns, f"no speech found in {clip.name}"
        longest = max(turns, key=lambda t: t.end - t.start)
        # Each clip is one short sentence with silence before and after it.
        assert 0.0 < longest.start < longest.end < len(audio) / sr
        assert 0.8 < longest.end - longest.start < 3.5
        single += len(turns) == 1
    assert single >= 0.9 * len(clips)
