"""eSpeak NG speech and the spoken dialogue video: deterministic, two voices, mouths that follow it."""
from __future__ import annotations

import numpy as np
import pytest

from backend.media import load_audio, probe, read_frames
from backend.synthetic_media import make_spoken_dialogue_video, mouth_boxes
from backend.tts import DIALOGUE_VOICES, synthesize

SR = 16000


def _median_f0(samples: np.ndarray, sr: int = SR) -> float:
    """Median pitch (Hz) of the voiced 40 ms frames, by autocorrelation over 70-400 Hz."""
    win, f0s = int(0.04 * sr), []
    for a in range(0, len(samples) - win, win):
        x = samples[a : a + win] - samples[a : a + win].mean()
        if np.sqrt(np.mean(x**2)) < 0.05:
            continue
        ac = np.correlate(x, x, "full")[win - 1 :]
        lo, hi = sr // 400, sr // 70
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            f0s.append(sr / lag)
    return float(np.median(f0s))


def test_speech_is_deterministic_and_the_voices_differ():
    lines = [("The quick brown fox jumps over the lazy dog.", voice) for voice in DIALOGUE_VOICES]
    first, second = synthesize(lines), synthesize(lines)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    low, high = (_median_f0(samples) for samples in first)
    assert 70 < low < 160 and high > 1.4 * low, (low, high)
    for samples in first:
        assert samples.dtype == np.float32 and 1.0 < len(samples) / SR < 5.0
        assert np.abs(samples[:80]).max() > 1e-3 and np.abs(samples[-80:]).max() > 1e-3  # trimmed


def test_pauses_and_truth(tmp_path):
    lines = [(0, "Hello."), (1, "Hi there."), (0, "Bye.")]
    truth = make_spoken_dialogue_video(tmp_path / "d.mp4", lines, pauses_s=[0.25, 1.0], size=(160, 96))
    assert [(t.speaker, t.text) for t in truth] == lines
    assert truth[0].start == pytest.approx(0.5)
    assert truth[1].start - truth[0].end == pytest.approx(0.25, abs=1e-3)
    assert truth[2].start - truth[1].end == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="pauses"):
        make_spoken_dialogue_video(tmp_path / "e.mp4", lines, pauses_s=[0.3])


def test_video_audio_is_the_speech_and_mouths_follow_it(spoken_dialogue):
    video, truth = spoken_dialogue
    info = probe(video)
    assert info.has_audio and info.duration_s == pytest.approx(truth[-1].end + 0.8, abs=0.1)
    audio = load_audio(video, SR)  # AAC in MP4, as users upload
    rms = lambda a, b: float(np.sqrt(np.mean(audio[int(a * SR) : int(b * SR)] ** 2)))  # noqa: E731
    for line, after in zip(truth, truth[1:]):
        assert rms(line.start, line.end) > 30 * rms(line.end + 0.05, after.start - 0.05)

    boxes = mouth_boxes((320, 180))
    closed = read_frames(video, [0.1])[0]  # before anyone speaks
    fps = 25
    for line in truth[:2]:
        times = [(f + 0.5) / fps for f in range(int(np.ceil(line.start * fps)), int(line.end * fps))]
        frames = read_frames(video, times)

        def opening(frame, side):
            x, y, w, h = boxes[side]
            return float(np.abs(frame[y : y + h, x : x + w].astype(int) - closed[y : y + h, x : x + w]).mean())

        speaker = [opening(f, line.speaker) for f in frames]
        listener = [opening(f, 1 - line.speaker) for f in frames]
        loudness = [rms(t - 0.02, t + 0.02) for t in times]
        assert np.corrcoef(speaker, loudness)[0, 1] > 0.8
        assert max(listener) < 0.2 * max(speaker)
