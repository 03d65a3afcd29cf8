"""Corpus names as the CLI and training code spell them, with their loaders and label sets."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backend.dialogue import Dialogue
from backend.errors import InputError
from backend.labels import IEMOCAP6, MELD7
from training.corpora.generic_csv import SPLITS, load_corpus_csv
from training.corpora.iemocap import load_iemocap
from training.corpora.meld import load_meld
from training.corpora.ravdess import load_ravdess


@dataclass(frozen=True)
class Corpus:
    load: Callable[..., list[Dialogue]]
    labels: tuple[str, ...]


CORPORA: dict[str, Corpus] = {
    "meld": Corpus(load_meld, MELD7),
    "iemocap": Corpus(load_iemocap, IEMOCAP6),
    "ravdess": Corpus(load_ravdess, MELD7),
    "csv": Corpus(load_corpus_csv, MELD7),
}


def _corpus(name: str) -> Corpus:
    try:
        return CORPORA[name]
    except KeyError:
        raise InputError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}") from None


def load_corpus(name: str, path: str | Path, **kw) -> list[Dialogue]:
    """Load the corpus `name` from `path` (a folder, or the CSV file for `csv`)."""
    corpus = _corpus(name)
    if not Path(path).exists():
        raise InputError(f"{path}: not found; point --data at the {name} corpus")
    return corpus.load(Path(path), **kw)


def corpus_labels(name: str) -> tuple[str, ...]:
    """The label set that the loader of `name` maps to (`csv` defaults to MELD7)."""
    return _corpus(name).labels


def split(dialogues: list[Dialogue], name: str) -> list[Dialogue]:
    """The dialogues of split `name` (train, validation or test), in order."""
    if name not in SPLITS:
        raise InputError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
    return [d for d in dialogues if d.split == name]
