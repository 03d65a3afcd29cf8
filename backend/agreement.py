"""Inter-annotator agreement: Cohen's kappa for pairs, Fleiss' kappa for many, confusion matrices.

A kappa is None where it is undefined (no shared turns, or chance agreement is already 1 because
every rating is the same label).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np

from backend.current_label import current_by_turn
from backend.errors import InputError


def confusion(a: Sequence[str], b: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """counts[i][j]: items `a` labelled labels[i] and `b` labelled labels[j]."""
    if len(a) != len(b):
        raise InputError(f"cannot compare {len(a)} labels with {len(b)}; give both raters the same items")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({x for x in (*a, *b) if x not in index})
    if unknown:
        raise InputError(f"labels {unknown} are not in the label set {list(labels)}")
    counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for x, y in zip(a, b):
        counts[index[x], index[y]] += 1
    return counts.tolist()


def cohen_kappa(a: Sequence[str], b: Sequence[str], labels: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters over the same items."""
    counts = np.asarray(confusion(a, b, labels), dtype=np.float64)
    n = counts.sum()
    if n == 0:
        return None
    observed = np.trace(counts) / n
    expected = float(counts.sum(1) @ counts.sum(0)) / n**2
    return None if expected >= 1 else float((observed - expected) / (1 - expected))


def fleiss_kappa(ratings: Sequence[Sequence[str]], labels: Sequence[str]) -> float | None:
    """Fleiss' kappa; `ratings[i]` holds the labels item i got (items may have different numbers of
    raters, at least 2; Fleiss' per-item agreement is averaged over items)."""
    index = {label: j for j, label in enumerate(labels)}
    items = [r for r in ratings if len(r) >= 2]
    if not items:
        return None
    counts = np.zeros((len(items), len(labels)))
    for i, item in enumerate(items):
        for label in item:
            if label not in index:
                raise InputError(f"label {label!r} is not in the label set {list(labels)}")
            counts[i, index[label]] += 1
    raters = counts.sum(1)
    per_item = ((counts**2).sum(1) - raters) / (raters * (raters - 1))
    shares = counts.sum(0) / counts.sum()
    expected = float((shares**2).sum())
    return None if expected >= 1 else float((per_item.mean() - expected) / (1 - expected))


def latest_labels(annotations: Iterable[dict]) -> dict[str, dict[int, str]]:
    """{annotator: {turn_id: that annotator's latest label}} from rows ordered oldest first; an
    adjudicator's final labels are not an annotator's independent judgement and are left out."""
    out: dict[str, dict[int, str]] = {}
    for row in annotations:
        if not row.get("adjudicated"):
            out.setdefault(row["annotator"], {})[row["turn_id"]] = row["label"]
    return out


def _pair(name_a: str, a: dict[int, str], name_b: str, b: dict[int, str], labels: Sequence[str]) -> dict:
    shared = sorted(a.keys() & b.keys())
    xs, ys = [a[t] for t in shared], [b[t] for t in shared]
    return {
        "a": name_a,
        "b": name_b,
        "n": len(shared),
        "kappa": cohen_kappa(xs, ys, labels),
        "agreement": (sum(x == y for x, y in zip(xs, ys)) / len(shared)) if shared else None,
        "confusion": confusion(xs, ys, labels),
    }


def _agreement(a: dict[int, str], b: dict[int, str]) -> dict:
    """{n: turns both labelled, agreement: the share of them with the same label (None when n is 0)}."""
    shared = a.keys() & b.keys()
    same = sum(a[t] == b[t] for t in shared)
    return {"n": len(shared), "agreement": same / len(shared) if shared else None}


def annotator_summaries(
    annotations: Sequence[dict], per_annotator: dict[str, dict[int, str]], predicted: dict[str, dict[int, str]]
) -> list[dict]:
    """Per annotator: saves, turns labelled, agreement with the other annotators (pooled over every
    turn shared with each of them) and with each model, on each annotator's latest labels."""
    saves = Counter(r["annotator"] for r in annotations if not r.get("adjudicated"))
    out = []
    for name in sorted(per_annotator):
        mine = per_annotator[name]
        pooled = [
            mine[t] == theirs[t]
            for other, theirs in sorted(per_annotator.items())
            if other != name
            for t in mine.keys() & theirs.keys()
        ]
        out.append(
            {
                "annotator": name,
                "saves": saves[name],
                "turns": len(mine),
                "others": {"n": len(pooled), "agreement": sum(pooled) / len(pooled) if pooled else None},
                "models": {model: _agreement(mine, labels) for model, labels in sorted(predicted.items())},
            }
        )
    return out


def agreement_report(annotations: Sequence[dict], labels: Sequence[str]) -> dict:
    """Pairwise Cohen's kappa between annotators, Fleiss' kappa over all of them (when more than two),
    and each model against the humans' current label of every turn, with confusion matrices
    (rows: the first rater, columns: the second); and a summary per annotator."""
    labels = list(labels)
    per_annotator = latest_labels(annotations)
    names = sorted(per_annotator)
    pairs = [_pair(x, per_annotator[x], y, per_annotator[y], labels) for x, y in combinations(names, 2)]
    fleiss = None
    if len(names) > 2:
        turns = sorted({t for labelled in per_annotator.values() for t in labelled})
        ratings = [[per_annotator[n][t] for n in names if t in per_annotator[n]] for t in turns]
        fleiss = {
            "annotators": names,
            "n": sum(len(r) >= 2 for r in ratings),
            "kappa": fleiss_kappa(ratings, labels),
        }
    human = {turn_id: row["label"] for turn_id, row in current_by_turn(annotations).items()}
    predicted: dict[str, dict[int, str]] = {}
    for row in annotations:
        for model, pred in row["predictions"].items():
            predicted.setdefault(model, {})[row["turn_id"]] = pred["label"]
    models = [_pair(model, predicted[model], "humans", human, labels) for model in sorted(predicted)]
    return {
        "labels": labels,
        "annotators": names,
        "turns": len(human),
        "pairs": pairs,
        "fleiss": fleiss,
        "models": models,
        "per_annotator": annotator_summaries(annotations, per_annotator, predicted),
    }
