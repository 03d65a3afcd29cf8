"""Speech to timed, texted turns: faster-whisper (CTranslate2 Whisper) words, split into turns at
pauses and at given speaker changes, with edges refined by voice activity (backend.vad).

Models: the packaged Whisper tiny.en / base (backend.packaged), a local faster-whisper folder, or a
faster-whisper hub id already in the local Hugging Face cache (downloads only when not offline).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from backend.dialogue import Turn
from backend.errors import InputError, ModelUnavailableError
from backend.packaged import PACKAGED, assembled_path
from backend.text import clean_text
from backend.vad import SAMPLE_RATE, speech_audio, speech_regions

ENGLISH_MODEL = "whisper-tiny.en"  # packaged, English only
MULTILINGUAL_MODEL = "whisper-base"  # packaged, any Whisper language
PLACEHOLDER_SPEAKER = "SPEAKER_1"  # ASR cannot tell speakers apart; faces attribute turns later
# A silence at least this long between words ends a turn: longer than the pauses within one turn
# (commas 0.13-0.22 s, sentence ends 0.42 s in the generated tuning dialogue), shorter than the long
# turn-taking pauses (0.67 s and up). A quicker change of speaker needs a `boundaries` time (faces).
TURN_PAUSE_S = 0.5
# Whisper's word times can be 0.2-0.5 s off (the first word often starts at 0): a word belongs to
# the voice-activity region nearest its middle when that is within SNAP_S.
SNAP_S = 0.35


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str


def asr_model_for(profile_model: str, language: str) -> str:
    """The model to run: the profile's, except that the packaged English-only model gives way to
    the packaged multilingual one for any other language."""
    if profile_model == ENGLISH_MODEL and language != "en":
        return MULTILINGUAL_MODEL
    return profile_model


def _source(name: str, cache_dir: Path) -> tuple[str, bool]:
    """(what WhisperModel loads, whether it is a local folder) for a packaged name, folder or hub id."""
    if name in PACKAGED:
        return str(assembled_path(name, Path(cache_dir))), True
    if Path(name).is_dir():
        return name, True
    return name, False


def _cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@lru_cache(maxsize=4)
def _load(source: str, local: bool, device: str) -> Any:
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        package = PACKAGED["silero-vad"]  # the faster-whisper release whose bundled VAD is pinned
        raise ModelUnavailableError(
            f"speech recognition needs the {package.package} package, which is missing; {package.install}"
        ) from None
    import ctranslate2
    from huggingface_hub import is_offline_mode

    # torch may see a GPU that this CTranslate2 build cannot use; Whisper then runs on the CPU.
    cuda = device.startswith("cuda") and ctranslate2.get_cuda_device_count() > 0
    index = int(device.split(":")[1]) if cuda and ":" in device else 0
    try:
        # One decoding at a time, all cores on it (CTranslate2's intra-op threads).
        return WhisperModel(
            source, device="cuda" if cuda else "cpu", device_index=index,
            compute_type="float16" if cuda else "int8", cpu_threads=0 if cuda else _cpu_threads(),
            local_files_only=is_offline_mode(),
        )
    except Exception as err:  # huggingface_hub, CTranslate2 and OSError failures all mean "unusable"
        if not local and is_offline_mode():
            raise ModelUnavailableError(
                f"the speech recognition model {source!r} is not in the local Hugging Face cache and downloads "
                f"are off (HF_HUB_OFFLINE=1); download it once with network access (hf download {source}), use "
                "a local faster-whisper (CTranslate2) folder, or upload subtitles or a transcript instead"
            ) from None
        raise ModelUnavailableError(f"cannot load the speech recognition model {source!r}: {err}") from err


def load_asr(name: str, device: str = "cpu", cache_dir: Path | None = None) -> Any:
    """The faster-whisper model `name` on `device`, loaded once per (model, device).

    `name`: a packaged model (ENGLISH_MODEL, MULTILINGUAL_MODEL; checked against their sha256,
    Whisper base joined into `cache_dir`, default the settings' model cache), a local
    faster-whisper folder, or a hub id (e.g. "Systran/faster-whisper-small") from the local cache.
    """
    if cache_dir is None:
        from backend.settings import get_settings

        cache_dir = get_settings().model_cache_dir
    return _load(*_source(name, cache_dir), device)


def transcribe_words(audio: np.ndarray, sr: int, model: Any, language: str = "en") -> list[Word]:
    """Every recognised word with its start and end in seconds."""
    samples = speech_audio(audio, sr)
    segments, _ = model.transcribe(
        samples, language=language, word_timestamps=True, vad_filter=False,
        # Earlier text as a prompt makes Whisper repeat itself across the silences of a dialogue.
        condition_on_previous_text=False,
    )
    return [
        Word(float(w.start), float(w.end), w.word.strip())
        for segment in segments
        for w in segment.words or ()
        if w.word.strip()
    ]


def _region_of(word: Word, regions: Sequence[tuple[float, float]]) -> int | None:
    """Index of the speech region nearest the word's middle (its least uncertain time), if within SNAP_S."""
    if not regions:
        return None
    mid = (word.start + word.end) / 2
    distance = [max(a - mid, mid - b, 0.0) for a, b in regions]
    best = int(np.argmin(distance))
    return best if distance[best] <= SNAP_S else None


def words_to_turns(
    words: Sequence[Word],
    regions: Sequence[tuple[float, float]],
    boundaries: Sequence[float] = (),
    pause_s: float = TURN_PAUSE_S,
) -> list[Turn]:
    """Group words into turns (speaker PLACEHOLDER_SPEAKER).

    A word belongs to the speech region nearest its middle; words with none within SNAP_S are
    dropped (Whisper invents words in silence). A turn ends at a silence of at least `pause_s`
    between the regions of two words and at every `boundaries` time (a speaker change; it splits
    the words whose middles lie on either side of it). A turn starts where its first word's region
    starts and ends where its last word's region ends (voice activity is accurate to ~50 ms,
    Whisper's word times are not), except at a boundary inside one region: there the words' times.
    """
    located = [(w, _region_of(w, regions)) for w in words]
    heard = [(w, r) for w, r in located if r is not None]
    cuts = sorted(boundaries)
    groups: list[list[tuple[Word, int]]] = []
    for word, region in heard:
        if groups:
            last, last_region = groups[-1][-1]
            pause = 0.0 if region == last_region else regions[region][0] - regions[last_region][1]
            mid_last, mid = (last.start + last.end) / 2, (word.start + word.end) / 2
            if pause < pause_s and not any(mid_last < t <= mid for t in cuts):
                groups[-1].append((word, region))
                continue
        groups.append([(word, region)])
    turns: list[Turn] = []
    for i, group in enumerate(groups):
        (first, first_region), (last, last_region) = group[0], group[-1]
        shared_before = i > 0 and groups[i - 1][-1][1] == first_region
        shared_after = i + 1 < len(groups) and groups[i + 1][0][1] == last_region
        start = first.start if shared_before else regions[first_region][0]
        end = last.end if shared_after else regions[last_region][1]
        if turns:
            start = max(start, turns[-1].end)
        text = clean_text(" ".join(w.text for w, _ in group))
        turns.append(Turn(PLACEHOLDER_SPEAKER, round(start, 3), round(max(end, start), 3), text))
    return turns


def recognise(
    audio: np.ndarray,
    sr: int,
    model_name: str = ENGLISH_MODEL,
    *,
    language: str = "en",
    device: str = "cpu",
    cache_dir: Path | None = None,
    activity: tuple[np.ndarray, float] | None = None,
) -> tuple[list[Word], list[tuple[float, float]]]:
    """The recognised words and the speech regions of `audio`; ([], []) when voice activity finds no
    speech (Whisper does not run then). `activity`: the audio's `voice_activity`, if already known."""
    samples = speech_audio(audio, sr)
    regions = speech_regions(samples, SAMPLE_RATE, activity)
    if not regions:
        return [], []
    model = load_asr(model_name, device, cache_dir)
    if language not in model.supported_languages:
        raise InputError(
            f"{model_name} does not know the language {language!r}; set ERC_ASR_LANGUAGE to a Whisper language "
            f"code it knows ({', '.join(sorted(model.supported_languages)[:12])}, ...)"
        )
    return transcribe_words(samples, SAMPLE_RATE, model, language), regions


def transcribe(
    audio: np.ndarray,
    sr: int,
    model_name: str = ENGLISH_MODEL,
    *,
    language: str = "en",
    device: str = "cpu",
    boundaries: Sequence[float] = (),
    cache_dir: Path | None = None,
) -> list[Turn]:
    """Turns with text from speech; [] when voice activity finds no speech.

    `boundaries`: times (seconds) where the speaker changes, e.g. from faces; a turn never spans one.
    """
    words, regions = recognise(audio, sr, model_name, language=language, device=device, cache_dir=cache_dir)
    return words_to_turns(words, regions, boundaries) if regions else []
