"""Model profiles: which encoders, checkpoints and ASR model a run uses. Profile names are defined here.

`offline` (default) uses small real encoders and checkpoints trained in this repository; `paper`
uses the papers' 7-8B models (from the local Hugging Face cache or local folders) through the
checkpoints "mister-e-paper" and "farcer-paper", trained with `python -m training train mister-e
--text-backbone ... --speech-backbone ...` and `train farcer --core ... --face-encoder ...`; without
them the profile's models are unavailable. Which checkpoint each model uses in a profile is said by
the model registry (backend.registry).
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
    description="small real models and checkpoints trained here: MiniLM text and pooled Whisper base "
    "speech encoders, BlazeFace/FaceMesh faces with a FER2013 CNN, a SmolLM2 FARCER core; no network needed",
    labels=MELD7,
    asr_model="whisper-tiny.en",
)

PAPER = Profile(
    name="paper",
    description="the papers' models (Qwen2.5-7B text and Qwen2-Audio-7B audio-tower encoders with LoRA, "
    "Llama-3-8B-Instruct with vit-face-expression, Whisper small ASR); needs a GPU, the weights in the "
    "local cache and checkpoints trained on them",
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
