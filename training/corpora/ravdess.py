"""RAVDESS speech clips (`Actor_XX/03-01-EE-II-SS-RR-AA.wav|flac`), one clip per dialogue."""
from __future__ import annotations

import re
from pathlib import Path

from backend.dialogue import Dialogue, Turn
from backend.errors import InputError
from backend.labels import MELD7, normalize_label

EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
            "06": "fearful", "07": "disgust", "08": "surprised"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
AUDIO_SUFFIXES = (".wav", ".flac")
NAMING = ("expected 03-01-EE-II-SS-RR-AA (modality 03 audio, vocal channel 01 speech or 02 song, "
          "emotion 01-08, intensity 01-02, statement 01-02, repetition, actor 01-24)")

_NAME = re.compile(r"03-0[12]-(0[1-8])-0[12]-(0[12])-\d\d-(\d\d)")


def split_of_actor(actor: int) -> str:
    """Speaker-independent split: actors 1-18 train, 19-20 validation, 21-24 test."""
    return "train" if actor <= 18 else "validation" if actor <= 20 else "test"


def _clip(path: Path) -> Dialogue:
    match = _NAME.fullmatch(path.stem)
    if match is None or not 1 <= int(match.group(3)) <= 24:
        raise InputError(f"{path}: not a RAVDESS file name; {NAMING}")
    actor = int(match.group(3))
    if path.parent.name != f"Actor_{actor:02d}":
        raise InputError(f"{path}: actor {actor:02d} in the file name but the folder is {path.parent.name}")
    emotion, statement = match.group(1), match.group(2)
    turn = Turn(
        speaker=path.parent.name,
        start=0.0,
        end=None,
        text=STATEMENTS[statement],
        label=normalize_label(EMOTIONS[emotion], MELD7, str(path)),
        audio=path,
    )
    return Dialogue(path.stem, [turn], split=split_of_actor(actor), corpus="ravdess")


def load_ravdess(root: str | Path) -> list[Dialogue]:
    """Every speech clip under `root`/Actor_XX as a one-turn dialogue with a MELD7 label."""
    root = Path(root)
    clips = sorted(
        p for p in root.glob("Actor_*/*")
        if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".")
    )
    if not clips:
        raise InputError(f"{root}: no RAVDESS clips found; expected Actor_XX/*.wav or *.flac, {NAMING}")
    dialogues = [_clip(p) for p in clips]
    seen: set[str] = set()
    for dialogue, path in zip(dialogues, clips):
        if dialogue.id in seen:
            raise InputError(f"{path}: the same clip appears twice (as .wav and .flac); keep one")
        seen.add(dialogue.id)
    return dialogues
