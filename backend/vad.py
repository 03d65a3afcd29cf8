"""Voice activity with Silero VAD v6 (the ONNX file faster-whisper ships, checked by backend.packaged).

`voice_activity` gives the per-frame speech probability (for active-speaker detection: lip motion
that follows it belongs to the speaker); `speech_regions` turns it into (start, end) spans.
"""
from __future__ import annotations

from functools import lru_cache
from math import gcd
from typing import Any

import numpy as np

from backend.errors import InputError, ModelUnavailableError
from backend.packaged import PACKAGED, packaged_path

SAMPLE_RATE = 16_000  # Silero and Whisper both take 16 kHz
_WINDOW = 512  # samples per Silero v6 frame at 16 kHz
HOP_S = _WINDOW / SAMPLE_RATE  # 32 ms
_VAD = PACKAGED["silero-vad"]

# Hysteresis on the speech probability, as silero's own splitter: a region opens at ON and closes
# after the probability stays under OFF for MIN_SILENCE_S. The silence is short enough to keep
# quick turn-taking gaps (0.25 s) apart; splitting within a speaker's turn is the caller's concern.
ON, OFF = 0.5, 0.35
MIN_SILENCE_S = 0.1
MIN_SPEECH_S = 0.1


def speech_audio(audio: np.ndarray, sr: int) -> np.ndarray:
    """Float32 mono audio at 16 kHz (channels averaged; the shorter axis is channels)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=int(np.argmin(audio.shape)))
    if audio.ndim != 1 or audio.size == 0:
        raise InputError(f"the audio must be a non-empty mono or stereo signal; got shape {audio.shape}")
    if sr <= 0:
        raise InputError(f"the audio sample rate must be positive; got {sr}")
    if sr != SAMPLE_RATE:
        from scipy.signal import resample_poly

        common = gcd(sr, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // common, sr // common).astype(np.float32)
    return audio


@lru_cache(maxsize=1)
def _silero() -> Any:
    """The Silero VAD session, read from the sha256-checked file (not through faster-whisper's own
    unchecked loader)."""
    model_file = packaged_path("silero-vad") / next(iter(_VAD.files))
    try:
        from faster_whisper.vad import SileroVADModel

        return SileroVADModel(str(model_file))
    except ImportError:
        raise ModelUnavailableError(
            f"voice activity detection needs the onnxruntime and {_VAD.package} packages; {_VAD.install}"
        ) from None
    except RuntimeError as err:  # faster-whisper's wording for a missing onnxruntime
        raise ModelUnavailableError(f"{err}; install it with `pip install onnxruntime` (it is in requirements.txt)") from None


def voice_activity(audio: np.ndarray, sr: int) -> tuple[np.ndarray, float]:
    """Speech probability (float32, 0-1) of every HOP_S frame of the audio, and HOP_S.

    Frame k covers [k * HOP_S, (k + 1) * HOP_S) seconds; the last frame is zero-padded.
    """
    return _probabilities(speech_audio(audio, sr)), HOP_S


def _probabilities(samples: np.ndarray) -> np.ndarray:
    padded = np.pad(samples, (0, -len(samples) % _WINDOW))
    return _silero()(padded).reshape(-1).astype(np.float32)


def regions_from_probabilities(
    probs: np.ndarray,
    hop_s: float,
    on: float = ON,
    off: float = OFF,
    min_silence_s: float = MIN_SILENCE_S,
    min_speech_s: float = MIN_SPEECH_S,
) -> list[tuple[float, float]]:
    """(start, end) seconds of runs that rise to `on` and end once under `off` for min_silence_s."""
    # Durations in whole frames (rounded), so that float steps do not decide a borderline case.
    quiet_frames, speech_frames = max(1, round(min_silence_s / hop_s)), round(min_speech_s / hop_s)
    runs: list[tuple[int, int]] = []
    start = quiet_since = None
    for k, p in enumerate(probs):
        if start is None:
            if p >= on:
                start, quiet_since = k, None
        elif p < off:
            quiet_since = k if quiet_since is None else quiet_since
            if k + 1 - quiet_since >= quiet_frames:
                runs.append((start, quiet_since))
                start = quiet_since = None
        elif p >= on:
            quiet_since = None
    if start is not None:
        runs.append((start, quiet_since if quiet_since is not None else len(probs)))
    return [(round(a * hop_s, 3), round(b * hop_s, 3)) for a, b in runs if b - a >= speech_frames]


def speech_regions(
    audio: np.ndarray, sr: int, activity: tuple[np.ndarray, float] | None = None
) -> list[tuple[float, float]]:
    """(start, end) seconds of speech in the audio, in order; [] for silence or noise. `activity`:
    this audio's `voice_activity`, when the caller already has it."""
    samples = speech_audio(audio, sr)
    duration = len(samples) / SAMPLE_RATE
    probs, hop_s = activity if activity is not None else (_probabilities(samples), HOP_S)
    return [(a, min(b, duration)) for a, b in regions_from_probabilities(probs, hop_s)]
