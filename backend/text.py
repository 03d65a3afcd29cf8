"""Text helpers every turn source and corpus shares: decoding, mojibake repair, timestamps."""
from __future__ import annotations

import re

from backend.errors import InputError

# UTF-8 bytes that were decoded as latin-1 or cp1252: a lead byte and its continuation bytes.
_CONT = "[\u0080-\u00bf" + re.escape(bytes(range(0x80, 0xA0)).decode("cp1252", errors="ignore")) + "]"
_MOJIBAKE = re.compile(f"[\u00c2-\u00df]{_CONT}|[\u00e0-\u00ef]{_CONT}{{2}}|[\u00f0-\u00f4]{_CONT}{{3}}")
_C1 = re.compile("[\u0080-\u009f]")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
                         "\u00a0": " "})
_TIMESTAMP = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[.,](\d+))?$")
_SECONDS = re.compile(r"^\d+(?:\.\d*)?$|^\.\d+$")


def _as_bytes(text: str) -> bytes:
    return b"".join(bytes([ord(c)]) if ord(c) < 256 else c.encode("cp1252") for c in text)


def _undo_mojibake(match: re.Match) -> str:
    try:
        return _as_bytes(match.group()).decode("utf-8")
    except UnicodeDecodeError:
        return match.group()


def _c1_to_cp1252(match: re.Match) -> str:
    return bytes([ord(match.group())]).decode("cp1252", errors="ignore")


def clean_text(text: str) -> str:
    """Undo mojibake (UTF-8 read as latin-1/cp1252, as in MELD), use ASCII quotes, collapse spaces."""
    text = _MOJIBAKE.sub(_undo_mojibake, text)
    text = _C1.sub(_c1_to_cp1252, text)
    return " ".join(text.translate(_QUOTES).split())


def decode_text(data: bytes, name: str) -> str:
    """Decode a text file: UTF-8 (BOM or not), UTF-16 with a BOM, else cp1252."""
    encodings = ("utf-16",) if data.startswith((b"\xff\xfe", b"\xfe\xff")) else ("utf-8-sig", "cp1252")
    for encoding in encodings:
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise InputError(
            f"{name}: the text encoding is not recognised; save the file as UTF-8 and upload it again"
        )
    if "\x00" in text:
        raise InputError(f"{name}: the file looks binary or UTF-16 without a BOM; save it as UTF-8 text")
    return text


def parse_timestamp(value: str, where: str = "") -> float:
    """Seconds from `12.5`, `00:12:43,012`, `0:12:43.012` or `12:43.012` (a leading `-` is kept)."""
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("-").strip()
    if _SECONDS.match(body):
        return sign * float(body)
    match = _TIMESTAMP.match(body)
    if match and int(match[2]) < 60 and int(match[3]) < 60:
        hours, minutes, seconds, fraction = match.groups()
        total = int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)
        if fraction:
            total += int(fraction) / 10 ** len(fraction)
        return sign * total
    prefix = f"{where}: " if where else ""
    raise InputError(
        f"{prefix}cannot read the time {value!r}; write seconds (12.5) or hh:mm:ss,mmm (00:00:12,500)"
    )
