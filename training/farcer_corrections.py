"""FARCER's side of `--corrections` (training/corrections.py): corrected dialogues join the train and
validation splits with their own face crops (training.farcer.own_faces), and validation reports the
corpus and the corrections apart."""

from __future__ import annotations

from collections.abc import Mapping

from backend.dialogue import Dialogue
from training.corrections import Corrections


def corrected_train(corrections: Corrections) -> list[Dialogue]:
    """The corrected train dialogues, each round(weight) times (at least once): FARCER draws its samples
    once per run, so the weight cannot be redrawn each epoch as MiSTER-E does."""
    copies = max(1, round(corrections.weight))
    return [d for d in corrections.train for _ in range(copies)]


def views_lines(val: Mapping) -> str:
    """The card's per-view validation lines (empty when validation had one view)."""
    views = val.get("views") or {}
    return "\nBy view:\n\n" + "".join(
        f"- `{name}`: weighted F1 {r['weighted_f1']:.4f}, accuracy {r['accuracy']:.4f}, n={r['n']}\n"
        for name, r in views.items()
    ) if views else ""
