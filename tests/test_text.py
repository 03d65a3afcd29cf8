"""Text decoding, mojibake repair and timestamps shared by every turn source and corpus."""
import pytest

from backend.errors import InputError
from backend.text import clean_text, decode_text, parse_timestamp


@pytest.mark.parametrize("raw, expected", [
    ("You\x92re", "You're"), ("You\u00c2\x92re", "You're"), ("You\u00e2\x80\x99re", "You're"),
    ("You\u00e2\u20ac\u2122re", "You're"), ("\u201cHi\u201d \u2018x\u2019", "\"Hi\" 'x'"),
    ("caf\u00c3\u00a9", "caf\u00e9"), ("caf\u00e9\u2019s", "caf\u00e9's"), ("a \u00a0 b", "a b"),
    ("I\x92m  Â\x92here\n", "I'm 'here"), ("wait\u2026", "wait\u2026"),
])
def test_clean_text(raw, expected):
    assert clean_text(raw) == expected


@pytest.mark.parametrize(
    "raw, seconds",
    [("00:12:43,012", 763.012), ("0:12:43,012", 763.012), ("00:05:11,82", 311.82), ("12:43.5", 763.5),
     ("12.25", 12.25), ("7", 7.0), ("1:00:00.5", 3600.5), ("-1.5", -1.5)],
)
def test_parse_timestamp(raw, seconds):
    assert parse_timestamp(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "12:75:00", "1:2:3:4", "abc", "00:00:01;000"])
def test_parse_timestamp_rejects_with_hint(raw):
    with pytest.raises(InputError, match=r"^x\.csv:3: .*hh:mm:ss,mmm"):
        parse_timestamp(raw, where="x.csv:3")


@pytest.mark.parametrize("data, text", [
    ("caf\u00e9".encode("utf-8-sig"), "caf\u00e9"),
    ("caf\u00e9".encode("utf-16"), "caf\u00e9"),
    ("caf\u00e9 \u2019".encode("cp1252"), "caf\u00e9 \u2019"),
])
def test_decode_text(data, text):
    assert decode_text(data, "x.srt") == text


def test_decode_text_rejects_binary():
    with pytest.raises(InputError, match="x.srt: .*UTF-8"):
        decode_text(b"ab\x00cd", "x.srt")
