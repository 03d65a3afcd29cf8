"""Energy-based voice-activity detection: split a soundtrack into turns when no transcript exists."""
from __future__ import annotations

import numpy as np

from backend.dialogue import Turn
from backend.errors import InputError

SPEAKER = "SPEAKER_1"  # VAD cannot tell speakers apart


def _frame_db(audio: np.ndarray, win: int, hop: int) -> np.ndarray:
    """Energy in dB of frames `win` samples long every `hop` samples."""
    if len(audio) < win:
        return np.zeros(0)
    squares = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    starts = np.arange(0, len(audio) - win + 1, hop)
    energy = (squares[starts + win] - squares[starts]) / win
    return 10 * np.log10(energy + 1e-12)


def _hysteresis(db: np.ndarray, on: float, off: float) -> list[tuple[int, int]]:
    """[first, last] frame runs that rise above `on` and last until they fall below `off`."""
    runs, start = [], None
    for i, level in enumerate(db):
        if start is None and level > on:
            start = i
        elif start is not None and level < off:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(db) - 1))
    return runs


def vad_turns(
    audio: np.ndarray,
    sr: int,
    min_speech_s: float = 0.3,
    min_silence_s: float = 0.35,
    *,
    frame_s: float = 0.03,
    hop_s: float = 0.01,
    on_ratio: float = 0.45,
    off_ratio: float = 0.25,
    min_range_db: float = 12.0,
    silence_dbfs: float = -65.0,
) -> list[Turn]:
    """Speech segments of a mono signal as turns (speaker SPEAKER_1, empty text).

    The thresholds adapt to the recording: the noise floor is the 10th percentile of frame energy,
    the speech level the 95th; a segment opens above floor + on_ratio * range and closes below
    floor + off_ratio * range. Pauses shorter than min_silence_s are bridged, then segments
    shorter than min_speech_s dropped. Audio that is silent (speech level under silence_dbfs) or
    has no contrast between pauses and speech (range under min_range_db) gives no turns.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise InputError(
            f"VAD needs mono audio (a 1-D array), got shape {audio.shape}. Mix the channels down first."
        )
    if sr <= 0:
        raise InputError(f"Sample rate must be positive, got {sr}.")
    win, hop = max(1, round(frame_s * sr)), max(1, round(hop_s * sr))
    db = _frame_db(audio, win, hop)
    if db.size == 0:
        return []
    floor, speech = np.percentile(db, 10), np.percentile(db, 95)
    if speech < silence_dbfs or speech - floor < min_range_db:
        return []
    runs = _hysteresis(db, floor + on_ratio * (speech - floor), floor + off_ratio * (speech - floor))
    # A frame's energy is assigned to its centre; a run spans its first to its last frame centre.
    hop_t, centre = hop / sr, win / sr / 2
    segments: list[list[float]] = []
    for first, last in runs:
        start, end = first * hop_t + centre - hop_t / 2, last * hop_t + centre + hop_t / 2
        if segments and start - segments[-1][1] < min_silence_s:
            segments[-1][1] = end
        else:
            segments.append([start, end])
    total = len(audio) / sr
    return [
        Turn(speaker=SPEAKER, start=round(max(0.0, s), 3), end=round(min(total, e), 3), text="")
        for s, e in segments
        if e - s >= min_speech_s
    ]
