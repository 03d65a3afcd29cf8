"""Speech to timed turns with a Whisper model, through the transformers ASR pipeline."""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from backend.dialogue import Turn
from backend.errors import InputError, ModelUnavailableError
from backend.meld_csv import DEFAULT_SPEAKER
from backend.text import clean_text

MERGE_GAP_S = 0.3
_SENTENCE_END = (".", "?", "!", "…")


def _model_source(model_id: str) -> str:
    """A local folder for `model_id`, or the id itself when downloads are allowed."""
    from huggingface_hub import is_offline_mode, snapshot_download

    if Path(model_id).is_dir() or not is_offline_mode():
        return model_id
    try:
        return snapshot_download(model_id, local_files_only=True)
    except (OSError, ValueError):
        raise ModelUnavailableError(
            f"the speech recognition model {model_id!r} is not in the local Hugging Face cache and downloads"
            " are off (HF_HUB_OFFLINE=1); download it once with network access (hf download"
            f" {model_id}), or upload subtitles or a transcript instead"
        ) from None


@lru_cache(maxsize=4)
def load_asr(model_id: str, device: str = "cpu") -> Any:
    """The Whisper ASR pipeline for `model_id` on `device`, built once per (model_id, device)."""
    import torch
    from transformers import pipeline

    source = _model_source(model_id)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        return pipeline("automatic-speech-recognition", model=source, device=device, dtype=dtype)
    except (OSError, ValueError) as err:
        raise ModelUnavailableError(f"cannot load the speech recognition model {model_id!r}: {err}") from err


def _mono(audio: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Float32 mono audio at `target_sr` (channels are averaged; the shorter axis is channels)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=int(np.argmin(audio.shape)))
    if audio.ndim != 1 or audio.size == 0:
        raise InputError(f"the audio must be a non-empty mono or stereo signal; got shape {audio.shape}")
    if sr <= 0:
        raise InputError(f"the audio sample rate must be positive; got {sr}")
    if sr != target_sr:
        from scipy.signal import resample_poly

        common = gcd(sr, target_sr)
        audio = resample_poly(audio, target_sr // common, sr // common).astype(np.float32)
    return audio


def chunks_to_turns(
    chunks: Sequence[dict], duration_s: float, merge_gap_s: float = MERGE_GAP_S
) -> list[Turn]:
    """Turns from Whisper's timestamped chunks, clipped to the audio.

    Whisper segments are roughly sentences, which is the unit ERC labels. A segment is merged into
    the previous one only when that one stops mid-sentence and the gap is under `merge_gap_s`:
    merging on the gap alone would glue a whole monologue into one turn.
    """
    turns: list[Turn] = []
    for chunk in chunks:
        text = clean_text(chunk.get("text") or "")
        start, end = chunk.get("timestamp") or (None, None)
        if start is None:
            start = turns[-1].end if turns else 0.0
        if end is None:
            end = duration_s
        start, end = max(float(start), 0.0), min(float(end), duration_s)
        if not text or start >= duration_s:
            continue
        end = max(end, start)
        last = turns[-1] if turns else None
        if last and not last.text.endswith(_SENTENCE_END) and start - last.end < merge_gap_s:
            turns[-1] = Turn(DEFAULT_SPEAKER, last.start, max(last.end, end), f"{last.text} {text}")
        else:
            turns.append(Turn(DEFAULT_SPEAKER, start, end, text))
    return turns


def transcribe(
    audio: np.ndarray, sr: int, model_id: str, device: str = "cpu", merge_gap_s: float = MERGE_GAP_S
) -> list[Turn]:
    """Transcribe audio into timed turns, all with the speaker `Speaker`."""
    asr = load_asr(model_id, device)
    target_sr = asr.feature_extractor.sampling_rate
    samples = _mono(audio, sr, target_sr)
    result = asr({"raw": samples, "sampling_rate": target_sr}, return_timestamps=True)
    return chunks_to_turns(result.get("chunks", []), len(samples) / target_sr, merge_gap_s)
