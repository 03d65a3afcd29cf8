"""The evaluation report every `evaluate` command writes (0-1 scale)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

REPORT_KEYS = ("weighted_f1", "accuracy", "per_class_f1", "per_class_recall", "labels", "confusion", "n")


def classification_report(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], present: Sequence[str] | None = None
) -> dict:
    """Weighted F1, accuracy, per-class F1/recall and the confusion matrix over `labels`.

    `present` are the labels the evaluated corpus can contain; the others get `null` per-class
    scores (a model with 7 labels evaluated on a corpus with 6 still reports all 7 rows).
    """
    labels = list(labels)
    present = set(labels if present is None else present)
    if not y_true:
        raise ValueError("cannot evaluate on an empty set of utterances")
    _, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class_f1": {l: (float(v) if l in present else None) for l, v in zip(labels, f1)},
        "per_class_recall": {l: (float(v) if l in present else None) for l, v in zip(labels, recall)},
        "labels": labels,
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).astype(np.int64).tolist(),
        "n": len(y_true),
    }


def unweighted_average_recall(report: dict) -> float:
    """Mean recall over the classes present in the evaluated data (UAR)."""
    values = [v for v in report["per_class_recall"].values() if v is not None]
    return float(np.mean(values))
