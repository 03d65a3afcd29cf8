"""The next turn to label: model disagreement first, then uncertainty; labelled turns left out."""

from __future__ import annotations

import pytest

from backend.label_order import teaching_order, teaching_score
from backend.labels import MELD7


def _probs(top: str, share: float) -> dict[str, float]:
    rest = (1 - share) / (len(MELD7) - 1)
    return {label: share if label == top else rest for label in MELD7}


def _turn(index: int, mister_e: dict | None, farcer: dict | None) -> dict:
    turn = {"index": index, "turn_id": 100 + index}
    for key, probs in (("mister_e", mister_e), ("farcer", farcer)):
        if probs is not None:
            turn[key] = {"label": max(probs, key=probs.get), "probs": probs}
    return turn


def test_disagreement_then_uncertainty_first():
    agree_sure = _turn(0, _probs("joy", 0.95), _probs("joy", 0.95))
    disagree_sure = _turn(1, _probs("joy", 0.95), _probs("anger", 0.95))
    agree_unsure = _turn(2, _probs("joy", 0.2), _probs("joy", 0.2))
    one_model = _turn(3, _probs("fear", 0.5), None)
    doc = {"labels": list(MELD7), "turns": [agree_sure, disagree_sure, agree_unsure, one_model]}
    assert teaching_order(doc, labelled=set()) == [1, 2, 3, 0]
    assert teaching_order(doc, labelled={101}) == [2, 3, 0], "labelled turns are left out"
    assert teaching_score(agree_sure, MELD7) == pytest.approx(teaching_score(_turn(0, _probs("joy", 0.95), None), MELD7))
    uniform = {label: 1 / len(MELD7) for label in MELD7}
    assert teaching_score(_turn(0, uniform, uniform), MELD7) == pytest.approx(1.0), "uniform: most unsure, no disagreement"
    assert teaching_score(_turn(0, None, None), MELD7) == 0.0
