"""Emotion label sets and the one synonym map. Every other module takes labels from here."""
from __future__ import annotations

from backend.errors import InputError

MELD7: tuple[str, ...] = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
IEMOCAP6: tuple[str, ...] = ("happiness", "sadness", "neutral", "anger", "excitement", "frustration")

LABEL_SETS: dict[str, tuple[str, ...]] = {"meld": MELD7, "iemocap": IEMOCAP6}

IEMOCAP_CODES: dict[str, str] = {
    "hap": "happiness",
    "sad": "sadness",
    "neu": "neutral",
    "ang": "anger",
    "exc": "excitement",
    "fru": "frustration",
}

# Surface forms seen in corpora (RAVDESS, FER2013, user CSVs) mapped to a canonical word. The
# happiness/joy pair depends on the target set: MELD says "joy", IEMOCAP says "happiness".
_SYNONYMS: dict[str, str] = {
    "sad": "sadness",
    "angry": "anger",
    "fearful": "fear",
    "surprised": "surprise",
    "calm": "neutral",
    "disgusted": "disgust",
    "excited": "excitement",
    "frustrated": "frustration",
    **IEMOCAP_CODES,
}
_HAPPY_FORMS = frozenset({"happy", "happiness", "joy", "hap"})


def label_set(name: str) -> tuple[str, ...]:
    """The labels of a named set (`meld` or `iemocap`)."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise InputError(
            f"unknown label set {name!r}; choose one of {', '.join(sorted(LABEL_SETS))}"
        ) from None


def canonical_label(raw: str, labels: tuple[str, ...] | list[str] = MELD7) -> str | None:
    """Map a raw label to a member of `labels`, or None when it has no place there."""
    word = raw.strip().lower()
    if word in _HAPPY_FORMS:
        for happy in ("joy", "happiness"):
            if happy in labels:
                return happy
        return None
    word = _SYNONYMS.get(word, word)
    return word if word in labels else None


def normalize_label(raw: str, labels: tuple[str, ...] | list[str] = MELD7, where: str = "") -> str:
    """Like `canonical_label`, but an unknown label is an `InputError` naming `where`."""
    label = canonical_label(raw, labels)
    if label is None:
        prefix = f"{where}: " if where else ""
        raise InputError(
            f"{prefix}unknown emotion label {raw!r}; expected one of {', '.join(labels)}"
            " (or a synonym such as happy, sad, angry, fearful, surprised, calm)"
        )
    return label
