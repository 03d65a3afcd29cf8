import pytest

from backend.errors import InputError
from backend.labels import IEMOCAP6, MELD7, canonical_label, label_set, normalize_label


def test_label_sets_are_the_published_ones():
    assert MELD7 == ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
    assert set(IEMOCAP6) == {"happiness", "sadness", "neutral", "anger", "excitement", "frustration"}
    assert label_set("iemocap") is IEMOCAP6


@pytest.mark.parametrize(
    "raw, labels, expected",
    [
        ("happy", MELD7, "joy"),
        ("Happiness", MELD7, "joy"),
        ("happy", IEMOCAP6, "happiness"),
        ("joy", IEMOCAP6, "happiness"),
        (" sad ", MELD7, "sadness"),
        ("angry", MELD7, "anger"),
        ("fearful", MELD7, "fear"),
        ("surprised", MELD7, "surprise"),
        ("calm", MELD7, "neutral"),
        ("hap", IEMOCAP6, "happiness"),
        ("fru", IEMOCAP6, "frustration"),
        ("exc", IEMOCAP6, "excitement"),
        ("disgust", IEMOCAP6, None),
        ("frustration", MELD7, None),
    ],
)
def test_canonical_label(raw, labels, expected):
    assert canonical_label(raw, labels) == expected


def test_unknown_label_message_names_where_and_choices():
    with pytest.raises(InputError) as err:
        normalize_label("bored", MELD7, where="dev.csv:12")
    message = str(err.value)
    assert message.startswith("dev.csv:12: unknown emotion label 'bored'")
    assert "neutral, joy, surprise" in message


def test_unknown_label_set():
    with pytest.raises(InputError, match="meld"):
        label_set("emoreact")
