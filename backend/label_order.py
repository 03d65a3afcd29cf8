"""Which turn to label next, where a human label teaches the models most: the turns the models disagree
on, then those they are unsure of.

A turn's score is the Jensen-Shannon divergence between the models' distributions (base 2, so 0 to 1;
0 with fewer than two models) plus their mean normalised entropy (0: certain, 1: uniform). Labelled turns
are left out.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from backend import registry


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _distributions(turn: dict, labels: Sequence[str]) -> list[np.ndarray]:
    out = []
    for spec in registry.MODELS:
        pred = turn.get(spec.key)
        if pred and pred.get("probs"):
            p = np.array([float(pred["probs"].get(label, 0.0)) for label in labels])
            if p.sum() > 0:
                out.append(p / p.sum())
    return out


def teaching_score(turn: dict, labels: Sequence[str]) -> float:
    """Disagreement (JS divergence) plus uncertainty (mean normalised entropy) of a turn's predictions."""
    dists = _distributions(turn, labels)
    if not dists:
        return 0.0
    uncertainty = float(np.mean([_entropy(p) for p in dists])) / np.log2(len(labels))
    disagreement = 0.0
    if len(dists) > 1:
        disagreement = _entropy(np.mean(dists, axis=0)) - float(np.mean([_entropy(p) for p in dists]))
    return disagreement + uncertainty


def teaching_order(doc: dict, labelled: Collection[int]) -> list[int]:
    """Indexes of the turns without a label (turn ids in `labelled` have one), best to label first."""
    labels = doc["labels"]
    scored = [(-teaching_score(t, labels), t["index"]) for t in doc["turns"] if t["turn_id"] not in labelled]
    return [index for _, index in sorted(scored)]
