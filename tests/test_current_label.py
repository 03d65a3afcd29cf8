"""The current-label policy: an adjudicated label wins, else the majority of each annotator's latest
label, a tie going to the most recent."""

from backend.agreement import latest_labels
from backend.current_label import current_annotation, current_by_turn


def rows(*saves: tuple) -> list[dict]:
    """(annotator, label[, adjudicated]) per save, oldest first, all for turn 1."""
    return [
        {"annotation_id": i, "turn_id": 1, "annotator": s[0], "label": s[1], "adjudicated": s[2:] == (True,)}
        for i, s in enumerate(saves, start=1)
    ]


def label(*saves: tuple) -> str | None:
    found = current_annotation(rows(*saves))
    return None if found is None else found["label"]


def test_no_annotations_no_label():
    assert label() is None and current_by_turn([]) == {}


def test_each_annotator_votes_once_with_their_latest_label():
    assert label(("ann", "joy"), ("ann", "joy"), ("bob", "fear"), ("ann", "fear")) == "fear"
    assert label(("ann", "joy"), ("bob", "anger"), ("cy", "anger"), ("ann", "sadness")) == "anger"


def test_a_tie_goes_to_the_most_recent_label():
    assert label(("ann", "joy"), ("bob", "fear")) == "fear"
    assert label(("ann", "joy"), ("bob", "fear"), ("ann", "joy")) == "joy"
    # bob's old 'joy' is not his latest: the tie is between ann's joy and bob's fear, fear is later.
    assert label(("bob", "joy"), ("ann", "joy"), ("bob", "fear")) == "fear"


def test_an_adjudicated_label_wins_over_any_majority():
    saves = [("ann", "joy"), ("bob", "joy"), ("ada", "fear", True), ("cy", "joy")]
    assert label(*saves) == "fear"
    assert label(*saves, ("ada", "anger", True)) == "anger", "the latest adjudication"
    assert current_annotation(rows(*saves))["annotation_id"] == 3


def test_per_turn():
    saves = rows(("ann", "joy"), ("bob", "fear"))
    saves[0]["turn_id"] = 2
    assert {t: r["label"] for t, r in current_by_turn(saves).items()} == {2: "joy", 1: "fear"}


def test_adjudications_are_not_counted_as_an_annotators_judgement():
    assert latest_labels(rows(("ann", "joy"), ("ada", "fear", True))) == {"ann": {1: "joy"}}
