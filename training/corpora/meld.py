"""MELD from its official CSVs (train/dev/test_sent_emo.csv), with raw clips when present."""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from backend.dialogue import Dialogue, Turn
from backend.errors import InputError
from backend.meld_csv import parse_meld_csv
from backend.text import decode_text

# split -> (transcript CSV, folder of raw clips named dia{D}_utt{U}.mp4)
FILES: dict[str, tuple[str, str]] = {
    "train": ("train_sent_emo.csv", "train_splits"),
    "validation": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}


def _clips(folder: Path) -> set[str]:
    return set(os.listdir(folder)) if folder.is_dir() else set()


def _load_split(root: Path, split: str) -> list[Dialogue]:
    name, clip_folder = FILES[split]
    path = root / name
    if not path.is_file():
        raise InputError(f"{path}: MELD transcript not found; expected the official {name} in {root}")
    utterances = parse_meld_csv(decode_text(path.read_bytes(), str(path)), str(path))
    clips = _clips(root / clip_folder)

    def with_clip(dia: int, utt: int, turn: Turn) -> Turn:
        clip = f"dia{dia}_utt{utt}.mp4"
        media = root / clip_folder / clip if clip in clips else None
        return replace(turn, audio=media, video=media)

    return [
        Dialogue(
            f"{split}/{dia}",
            [with_clip(dia, u, rows[u].turn) for u in sorted(rows)],
            split=split,
            corpus="meld",
        )
        for dia, rows in sorted(utterances.items())
    ]


def load_meld(root: str | Path, splits: Iterable[str] = ("train", "validation", "test")) -> list[Dialogue]:
    """All dialogues of the requested splits; ids like `train/12`, turns by Utterance_ID."""
    root = Path(root)
    splits = tuple(splits)
    unknown = [s for s in splits if s not in FILES]
    if unknown:
        raise InputError(f"unknown MELD split(s) {', '.join(unknown)}; choose from {', '.join(FILES)}")
    return [dialogue for split in splits for dialogue in _load_split(root, split)]
