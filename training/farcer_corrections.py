"""FARCER's side of `--corrections` (training/corrections.py): corrected dialogues join the train and
validation splits with their own face crops, and validation reports the corpus and the corrections apart."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from backend.dialogue import Dialogue
from training.corrections import Corrections

Faces = list[list[np.ndarray | None]]  # per dialogue, per turn


def corrected_faces(
    corrections: Corrections, dialogues: Sequence[Dialogue], encode: Callable[[Sequence[Path]], np.ndarray] | None
) -> Faces:
    """Each corrected turn's face vector, `encode`d from its exported crop (the corpus CSV's `face`
    column, Turn.face); None without a crop, or for every turn when `encode` is None (a run without faces)."""
    if encode is None:
        return [[None] * len(d) for d in dialogues]
    rows = [[t.face for t in d.turns] for d in dialogues]
    paths = sorted({p for row in rows for p in row if p is not None})
    vectors = dict(zip(paths, encode(paths))) if paths else {}
    return [[None if p is None else vectors[p] for p in row] for row in rows]


def corrected_train(corrections: Corrections) -> list[Dialogue]:
    """The corrected train dialogues, each round(weight) times (at least once): FARCER draws its samples
    once per run, so the weight cannot be redrawn each epoch as MiSTER-E does."""
    copies = max(1, round(corrections.weight))
    return [d for d in corrections.train for _ in range(copies)]


def views_lines(val: Mapping) -> str:
    """The card's per-view validation lines (empty when validation had one view)."""
    views = val.get("views") or {}
    return "".join(
        f"- `{name}`: weighted F1 {r['weighted_f1']:.4f}, accuracy {r['accuracy']:.4f}, n={r['n']}\n"
        for name, r in views.items()
    )
