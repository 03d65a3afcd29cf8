"""Model profiles: which encoders, checkpoints and ASR model a run uses. Profile names are defined here.

`offline` (default) uses small real encoders and checkpoints trained in this repository; `paper`
uses the papers' 7-8B models, which must already be in the local Hugging Face cache or reachable.
Which checkpoint each model uses in a profile is said by the model registry (backend.registry).
"""
from __future__ import annotations

from dataclasses import dataclass

from backend.errors import InputError
from backend.labels import MELD7


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    labels: tuple[str, ...]
    asr_model: str  # speech recognition for videos without subtitles (backend.asr.load_asr names)


OFFLINE = Profile(
    name="offline",
    description="small real encoders (MiniLM, openSMILE eGeMAPS, a FER2013 CNN) and checkpoints "
    "trained here; no network needed",
    labels=MELD7,
    asr_model="whisper-tiny.en",
)

PAPER = Profile(
    name="paper",
    description="the papers' models (Qwen2.5-7B / Qwen2-Audio-7B encoders, Llama-3-8B-Instruct with "
    "vit-face-expression, Whisper ASR); needs a GPU and the weights in the local cache",
    labels=MELD7,
    asr_model="Systran/faster-whisper-small",
)

_PROFILES = {p.name: p for p in (OFFLINE, PAPER)}
PROFILES: tuple[str, ...] = tuple(_PROFILES)


def get_profile(name: str) -> Profile:
    try:
        return _PROFILES[name]
    except KeyError:
        raise InputError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None
