"""Cohen's and Fleiss' kappa, confusion matrices and the agreement report over stored annotations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from backend.agreement import agreement_report, cohen_kappa, confusion, fleiss_kappa
from backend.errors import InputError
from backend.labels import MELD7

# Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters each, 5 categories; kappa = 0.210.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_cohen_kappa_matches_sklearn():
    rng = np.random.default_rng(0)
    a = list(rng.choice(MELD7, 200))
    b = [x if rng.random() < 0.6 else rng.choice(MELD7) for x in a]
    assert cohen_kappa(a, b, MELD7) == pytest.approx(cohen_kappa_score(a, b, labels=list(MELD7)))
    assert cohen_kappa(a, a, MELD7) == pytest.approx(1.0)


def test_kappa_is_none_when_undefined():
    assert cohen_kappa([], [], MELD7) is None
    assert cohen_kappa(["joy"] * 3, ["joy"] * 3, MELD7) is None
    assert fleiss_kappa([["joy", "joy"], ["joy", "joy"]], MELD7) is None
    assert fleiss_kappa([["joy"]], MELD7) is None


def test_fleiss_kappa_worked_example():
    labels = [str(c) for c in range(5)]
    ratings = [[labels[c] for c, n in enumerate(item) for _ in range(n)] for item in FLEISS_TABLE]
    assert fleiss_kappa(ratings, labels) == pytest.approx(0.20993, abs=1e-5)


def test_confusion_rows_are_the_first_rater():
    counts = confusion(["joy", "joy", "fear"], ["joy", "anger", "fear"], ["joy", "anger", "fear"])
    assert counts == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    with pytest.raises(InputError, match=r"\['bored'\] are not in the label set"):
        confusion(["bored"], ["joy"], MELD7)
    with pytest.raises(InputError, match="same items"):
        confusion(["joy"], [], MELD7)


def _row(turn_id, annotator, label, model_label="joy"):
    return {
        "turn_id": turn_id,
        "annotator": annotator,
        "label": label,
        "dialogue_id": 1,
        "index": turn_id,
        "predictions": {"mister-e": {"label": model_label}},
    }


def test_report_uses_each_annotators_latest_label_and_compares_models_with_humans():
    rows = [
        _row(1, "ann", "anger"),
        _row(1, "ann", "joy"),  # ann corrected herself: joy counts
        _row(1, "bob", "joy"),
        _row(2, "ann", "fear"),
        _row(2, "bob", "sadness"),
        _row(2, "cy", "fear"),
        _row(3, "cy", "neutral", model_label="neutral"),
    ]
    report = agreement_report(rows, MELD7)
    assert report["annotators"] == ["ann", "bob", "cy"] and report["turns"] == 3
    ann_bob = report["pairs"][0]
    assert (ann_bob["a"], ann_bob["b"], ann_bob["n"], ann_bob["agreement"]) == ("ann", "bob", 2, 0.5)
    assert ann_bob["kappa"] == pytest.approx(cohen_kappa(["joy", "fear"], ["joy", "sadness"], MELD7))
    assert [(p["a"], p["b"], p["n"]) for p in report["pairs"][1:]] == [("ann", "cy", 1), ("bob", "cy", 1)]
    assert report["fleiss"]["n"] == 2
    assert report["fleiss"]["kappa"] == pytest.approx(
        fleiss_kappa([["joy", "joy"], ["fear", "sadness", "fear"]], MELD7)
    )
    [model] = report["models"]
    # humans' current labels: turn 1 joy (bob, latest row), turn 2 fear (cy), turn 3 neutral
    assert (model["a"], model["n"], model["agreement"]) == ("mister-e", 3, pytest.approx(2 / 3))
    assert model["confusion"][MELD7.index("joy")][MELD7.index("fear")] == 1
    ann, bob, cy = report["per_annotator"]
    assert (ann["annotator"], ann["saves"], ann["turns"]) == ("ann", 3, 2)
    # ann shares turn 1 with bob (same), turn 2 with bob (differs) and with cy (same)
    assert ann["others"] == {"n": 3, "agreement": pytest.approx(2 / 3)}
    assert ann["models"] == {"mister-e": {"n": 2, "agreement": 0.5}}
    assert cy["others"] == {"n": 2, "agreement": 0.5} and cy["models"]["mister-e"]["agreement"] == 0.5
    assert bob["models"]["mister-e"] == {"n": 2, "agreement": 0.5}


def test_report_with_one_annotator_has_no_pairs():
    report = agreement_report([_row(1, "ann", "joy")], MELD7)
    assert report["pairs"] == [] and report["fleiss"] is None and report["models"][0]["kappa"] is None
