"""The dialogue types shared by the analysis pipeline, the corpora and training."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class Turn:
    """One utterance. Times are seconds from the start of the media (None when unknown)."""

    speaker: str
    start: float | None
    end: float | None
    text: str
    label: str | None = None
    audio: Path | None = None
    video: Path | None = None
    face: Path | None = None  # an image of the speaker's face on this turn (a crop, as FER2013's)

    def with_label(self, label: str | None) -> "Turn":
        return replace(self, label=label)


@dataclass
class Dialogue:
    """An ordered list of turns with an id unique within its corpus."""

    id: str
    turns: list[Turn] = field(default_factory=list)
    split: str | None = None
    corpus: str | None = None

    def __len__(self) -> int:
        return len(self.turns)


@dataclass(frozen=True)
class LabelledImage:
    """A face image with its emotion label (FER2013-style folder-per-class corpora)."""

    path: Path
    label: str
    split: str | None = None
