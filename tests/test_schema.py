import copy

import pytest

from backend.labels import MELD7
from backend.schema import SCHEMA, SchemaError, validate_analysis


def _probs(label: str) -> dict:
    return {l: (0.4 if l == label else 0.1) for l in MELD7}


def _doc() -> dict:
    return {
        "schema": SCHEMA,
        "media": {"path": "a.mp4", "sha256": "0" * 64, "duration_s": 3.0, "has_audio": True},
        "profile": "offline",
        "labels": list(MELD7),
        "models": {"mister_e": {"name": "MiSTER-E", "version": "1"}},
        "turns": [
            {
                "index": 0, "speaker": "A", "start": 0.0, "end": 1.0, "text": "hi",
                "face": {"found": True, "box": [1, 2, 3, 4]},
                "mister_e": {
                    "label": "joy", "probs": _probs("joy"),
                    "gate": {"speech": 0.0, "text": 1.0, "cross": 0.0},
                    "experts": {"speech": None, "text": _probs("joy"), "cross": None},
                },
                "farcer": {"label": "anger", "probs": _probs("anger")},
            }
        ],
        "timings_s": {"load": 0.1, "total": 0.5},
        "warnings": [],
    }


def test_valid_document_passes():
    assert validate_analysis(_doc())["schema"] == "erc.analysis/1"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(schema="erc.analysis/0"), "schema"),
        (lambda d: d["media"].pop("sha256"), "media"),
        (lambda d: d["turns"][0].update(index=3), "index"),
        (lambda d: d["turns"][0]["face"].update(box=None), "face"),
        (lambda d: d["turns"][0]["farcer"].update(label="joy"), "argmax"),
        (lambda d: d["turns"][0]["farcer"]["probs"].update(joy=0.9), "sum"),
        (lambda d: d["turns"][0]["mister_e"]["gate"].update(speech=0.5), "gate"),
        (lambda d: d["turns"][0]["mister_e"]["gate"].update(speech=0.2, text=0.8), "unavailable"),
        (lambda d: d["turns"][0]["mister_e"]["probs"].pop("fear"), "labels"),
        (lambda d: d["timings_s"].pop("total"), "timings"),
    ],
)
def test_invalid_documents_name_the_problem(mutate, message):
    doc = copy.deepcopy(_doc())
    mutate(doc)
    with pytest.raises(SchemaError, match=message):
        validate_analysis(doc)
