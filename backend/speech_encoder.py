"""Whisper base encoder states pooled per turn: the inputs of MiSTER-E's offline speech encoder.

Whisper's encoder always reads a 30 s window, so encoding each short turn alone pads it to 30 s
(10-30x the work). Instead the turn clips of one dialogue are packed one after another into full
windows (a clip starts a new window when it does not fit in what is left, so it is never cut
unless it is longer than a window), each window is encoded once, and the states (50 per second)
that fall inside a clip are pooled into [mean ; std]. Training packs a corpus's (pseudo-)dialogues
through this same function, so train and serve features agree by construction.

Before packing, one gain brings the dialogue's clips to a common loudness: a recording's level
says little about emotion, and one gain for all turns keeps their relative loudness, which does.
`FEATURE_VERSION` names these features: change it whenever a change here changes the vectors, so
encoders trained on the old ones refuse to load instead of reading different inputs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np

from backend.errors import InputError
from backend.packaged import PACKAGED, assembled_path

WHISPER_BASE = "whisper-base"
SR = 16000
WINDOW = 30 * SR  # samples in one encoder window
HOP = 320  # samples per encoder state: 1500 states per 30 s window
STATE_DIM = 512  # Whisper base's encoder width
FEATURE_DIM = 2 * STATE_DIM  # [mean ; std]
FEATURE_VERSION = "whisper-base-packed-meanstd-v1"
COMPUTE_TYPE = "int8"
TARGET_RMS = 0.05  # about -26 dBFS over the dialogue's clips
MAX_GAIN = 1000.0  # +60 dB at most: a silent track is not blown up into noise
WINDOWS_PER_CALL = 4


def whisper_component() -> dict:
    """How a checkpoint records the packaged Whisper base weights its features come from."""
    return PACKAGED[WHISPER_BASE].component()


def feature_code_component() -> dict:
    return {"kind": "code", "name": FEATURE_VERSION}


@dataclass(frozen=True)
class Span:
    """Samples [start, end) of window `window` hold part of a clip."""

    window: int
    start: int
    end: int

    @property
    def states(self) -> slice:
        """The encoder states covering these samples (at least one)."""
        first = self.start // HOP
        return slice(first, max(first + 1, -(-self.end // HOP)))


def pack(lengths: Sequence[int]) -> tuple[list[list[Span]], int]:
    """Where each clip of `lengths` samples goes, as spans in windows; and how many windows."""
    placed, window, used = [], 0, 0
    for n in lengths:
        if n < 1:
            raise ValueError("every packed clip needs at least one sample")
        if used and used + n > WINDOW:
            window, used = window + 1, 0
        spans, left = [], n
        while left:
            if used == WINDOW:
                window, used = window + 1, 0
            take = min(left, WINDOW - used)
            spans.append(Span(window, used, used + take))
            used, left = used + take, left - take
        placed.append(spans)
    return placed, (window + 1 if lengths else 0)


def to_16k_mono(audio: np.ndarray, sr: int) -> np.ndarray:
    """Float32 mono at 16 kHz (channels averaged; the shorter axis of a 2-d array is channels)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=int(np.argmin(audio.shape)))
    if audio.ndim != 1:
        raise InputError(f"the audio must be a mono or stereo signal; got shape {audio.shape}")
    if sr <= 0:
        raise InputError(f"the audio sample rate must be positive; got {sr}")
    if sr != SR and audio.size:
        from scipy.signal import resample_poly

        common = gcd(sr, SR)
        audio = resample_poly(audio, SR // common, sr // common).astype(np.float32)
    return np.nan_to_num(audio)


def level_gain(clips: Sequence[np.ndarray]) -> float:
    """The one gain that brings `clips` together to TARGET_RMS (at most MAX_GAIN)."""
    energy = sum(float(np.square(c, dtype=np.float64).sum()) for c in clips)
    count = sum(len(c) for c in clips)
    rms = np.sqrt(energy / max(count, 1))
    return float(min(MAX_GAIN, TARGET_RMS / rms)) if rms > 0 else 1.0


class WhisperStates:
    """The packaged Whisper base encoder (CTranslate2): [W, 30 s] windows -> [W, 1500, 512] states."""

    def __init__(self, folder: Path, cpu_threads: int = 0):
        from faster_whisper import WhisperModel
        from faster_whisper.feature_extractor import FeatureExtractor

        self.model = WhisperModel(str(folder), device="cpu", compute_type=COMPUTE_TYPE, cpu_threads=cpu_threads)
        self.features = FeatureExtractor(feature_size=self.model.model.n_mels)

    def encode(self, windows: np.ndarray) -> np.ndarray:
        import ctranslate2

        out = []
        for start in range(0, len(windows), WINDOWS_PER_CALL):
            mels = np.stack([self.features(w, padding=0) for w in windows[start : start + WINDOWS_PER_CALL]])
            states = self.model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mels)), to_cpu=True)
            out.append(np.asarray(states, dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, WINDOW // HOP, STATE_DIM), np.float32)


@lru_cache(maxsize=1)
def load_whisper_states(cache_dir: Path) -> WhisperStates:
    """The verified packaged Whisper base (joined once into `cache_dir`), loaded once per process."""
    return WhisperStates(assembled_path(WHISPER_BASE, Path(cache_dir)))


def pooled_states(encoder: WhisperStates, clips: Sequence[np.ndarray]) -> np.ndarray:
    """[len(clips), 1024] mean and std of the encoder states inside each 16 kHz clip of one dialogue.

    The clips are brought to one loudness together, packed into 30 s windows in order, and each
    window is encoded once. Empty clips are refused: give only turns that have audio.
    """
    if not clips:
        return np.zeros((0, FEATURE_DIM), np.float32)
    if any(len(c) == 0 for c in clips):
        raise InputError("a turn's audio clip is empty; leave turns without audio out of the speech features")
    gain = level_gain(clips)
    placed, n_windows = pack([len(c) for c in clips])
    windows = np.zeros((n_windows, WINDOW), np.float32)
    for clip, spans in zip(clips, placed):
        offset = 0
        for span in spans:
            piece = clip[offset : offset + span.end - span.start]
            windows[span.window, span.start : span.end] = np.clip(piece * gain, -1.0, 1.0)
            offset += span.end - span.start
    states = encoder.encode(windows)
    out = np.zeros((len(clips), FEATURE_DIM), np.float32)
    for i, spans in enumerate(placed):
        frames = np.concatenate([states[s.window, s.states] for s in spans])
        out[i] = np.concatenate([frames.mean(axis=0), frames.std(axis=0)])
    return out
