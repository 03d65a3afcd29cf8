"""The speech encoder's inputs: packing turn clips into Whisper windows, one loudness per dialogue,
pooled packaged Whisper base states, and a tiny encoder head trained on them (synthetic audio)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.settings import get_settings
from backend.speech_encoder import (
    FEATURE_DIM,
    HOP,
    MAX_GAIN,
    SR,
    TARGET_RMS,
    WINDOW,
    Span,
    level_gain,
    load_whisper_states,
    pack,
    pooled_states,
    to_16k_mono,
)
from backend.errors import InputError
from models.encoders import FeatureEncoderConfig, FeatureSpeechEncoder


def tone(freq: float, seconds: float, amplitude: float = 0.3, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def states():
    """The packaged Whisper base encoder, with a count of the windows it was asked to encode."""
    encoder = load_whisper_states(get_settings().model_cache_dir)
    calls = []
    original = encoder.encode

    def counting(windows):
        calls.append(len(windows))
        return original(windows)

    encoder.encode = counting
    encoder.calls = calls
    yield encoder
    encoder.encode = original
    del encoder.calls


def test_clips_are_packed_whole_into_30_second_windows():
    s = SR
    placed, n = pack([10 * s, 15 * s, 10 * s, 3 * s])
    assert n == 2
    assert placed[0] == [Span(0, 0, 10 * s)] and placed[1] == [Span(0, 10 * s, 25 * s)]
    assert placed[2] == [Span(1, 0, 10 * s)]  # 10 s do not fit in the 5 s left: a new window
    assert placed[3] == [Span(1, 10 * s, 13 * s)]
    long, n = pack([2 * s, 70 * s, 1 * s])
    assert n == 4 and long[1] == [Span(1, 0, WINDOW), Span(2, 0, WINDOW), Span(3, 0, 10 * s)]
    assert long[2] == [Span(3, 10 * s, 11 * s)]
    assert Span(0, 10 * s, 25 * s).states == slice(500, 1250)
    assert Span(0, 100, 101).states == slice(0, 1)  # a sliver still gets its one state
    assert Span(0, HOP, HOP + 1).states == slice(1, 2)
    with pytest.raises(ValueError):
        pack([s, 0])


def test_one_gain_per_dialogue_keeps_relative_loudness():
    loud, quiet = tone(200, 1.0, 0.2), tone(200, 1.0, 0.02)
    gain = level_gain([loud, quiet])
    rms = np.sqrt(np.mean(np.square(np.concatenate([loud, quiet]) * gain)))
    assert rms == pytest.approx(TARGET_RMS, rel=1e-3)
    assert level_gain([np.zeros(100, np.float32)]) == 1.0 and level_gain([tone(200, 1.0, 1e-7)]) == MAX_GAIN


def test_audio_is_brought_to_16k_mono():
    stereo = np.stack([tone(300, 1.0, sr=48000), np.zeros(48000, np.float32)], axis=1)
    mono = to_16k_mono(stereo, 48000)
    assert mono.shape == (SR,) and np.abs(mono).max() == pytest.approx(0.15, rel=0.05)
    with pytest.raises(InputError, match="sample rate"):
        to_16k_mono(mono, 0)


def test_a_dialogue_is_encoded_once_per_packed_window(states):
    clips = [tone(f, 2.0) for f in (150, 300, 600, 1200, 2400)]
    before = sum(states.calls)
    pooled = pooled_states(states, clips)
    assert sum(states.calls) - before == 1  # 10 s of turns: one window, not five
    assert pooled.shape == (5, FEATURE_DIM) and np.isfinite(pooled).all()
    assert (pooled[:, FEATURE_DIM // 2 :] >= 0).all()  # the std half
    assert not np.allclose(pooled[0], pooled[4], atol=1e-3)
    with pytest.raises(InputError, match="empty"):
        pooled_states(states, [clips[0], np.zeros(0, np.float32)])


def test_a_tiny_encoder_head_learns_pitch_from_pooled_states(states):
    """Low vs high tones with jittered pitch and level: a 2-class head on the pooled states separates
    held-out clips (the features carry what the sound carries)."""
    rng = np.random.default_rng(0)

    def clips(base: float, n: int) -> list[np.ndarray]:
        return [tone(base * rng.uniform(0.9, 1.1), rng.uniform(0.4, 0.8), rng.uniform(0.05, 0.4)) for _ in range(n)]

    low, high = clips(180, 10), clips(1500, 10)
    train = pooled_states(states, low[:7] + high[:7])
    test = pooled_states(states, low[7:] + high[7:])
    y = torch.tensor([0] * 7 + [1] * 7)
    torch.manual_seed(0)
    model = FeatureSpeechEncoder(FeatureEncoderConfig(in_dim=FEATURE_DIM, n_labels=2, hidden_dim=8, embed_dim=4, dropout=0.0, shrink=4.0))
    model.set_standardization(train)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.from_numpy(train)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(test)).argmax(-1).tolist()
        assert model.embed(torch.from_numpy(test)).shape == (6, 4)
    assert predicted == [0, 0, 0, 1, 1, 1]
