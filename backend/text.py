"""Text helpers every turn source and corpus shares: decoding, mojibake repair, timestamps."""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator

from backend.errors import InputError

# UTF-8 bytes that were decoded as latin-1 or cp1252: a lead byte and its continuation bytes.
_CONT = "[\u0080-\u00bf" + re.escape(bytes(range(0x80, 0xA0)).decode("cp1252", errors="ignore")) + "]"
_MOJIBAKE = re.compile(f"[\u00c2-\u00df]{_CONT}|[\u00e0-\u00ef]{_CONT}{{2}}|[\u00f0-\u00f4]{_CONT}{{3}}")
_C1 = re.compile("[\u0080-\u009f]")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
                         "\u00a0": " "})
_KANA = re.compile("[\u3040-\u30ff]")
_NON_ASCII = re.compile("[^\x00-\x7f]")
_NON_ASCII_RUN = re.compile("[^\x00-\x7f]{3,}")
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


def _reads_as_japanese(text: str) -> bool:
    # Kana are a large share of any Japanese text, and rare in Western bytes read as Shift-JIS.
    non_ascii = len(_NON_ASCII.findall(text))
    return non_ascii > 0 and len(_KANA.findall(text)) >= 0.2 * non_ascii


def _reads_as_western(text: str) -> bool:
    # Western text in cp1252 has accented letters here and there; text in another 8-bit or
    # multi-byte encoding read as cp1252 is mostly long runs of them:
    # "Ïðèâåò" (cp1251), "‚±‚ñ‚É‚¿‚Í" (Shift-JIS).
    in_runs = sum(len(run) for run in _NON_ASCII_RUN.findall(text))
    return in_runs <= 0.5 * len(_NON_ASCII.findall(text))


def _strict(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return None


def decode_text(data: bytes, name: str) -> str:
    """Decode a text file: UTF-8 (BOM or not), UTF-16 with a BOM, Shift-JIS when it reads as Japanese,
    cp1252 when it reads as Western text; anything else is refused with a message asking for UTF-8."""
    refusal = f"{name}: the text encoding is not recognised; save the file as UTF-8 and upload it again"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = _strict(data, "utf-16")
    else:
        text = _strict(data, "utf-8-sig")
        if text is None and (japanese := _strict(data, "cp932")) is not None and _reads_as_japanese(japanese):
            text = japanese
        if text is None and (western := _strict(data, "cp1252")) is not None:
            if not _reads_as_western(western):
                sample = _NON_ASCII_RUN.search(western)[0][:12]
                raise InputError(
                    f"{name}: the text encoding is not recognised (it is not UTF-8, and read as"
                    f" Windows-1252 it gives {sample!r}); save the file as UTF-8 and upload it again"
                )
            text = western
    if text is None:
        raise InputError(refusal)
    if "\x00" in text:
        raise InputError(f"{name}: the file looks binary or UTF-16 without a BOM; save it as UTF-8 text")
    return text


def csv_rows(text: str, name: str) -> Iterator[tuple[int, list[str]]]:
    """(line the row starts on, cells) for each row of a CSV text; a malformed row (a quote never
    closed, a cell over the csv module's 128 KiB limit, text after a closing quote) is an
    `InputError` naming that line."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise InputError(_csv_problem(f"{name}:{start}", str(err))) from None
        yield start, cells


def _csv_problem(where: str, error: str) -> str:
    if "field larger than field limit" in error:
        kib = csv.field_size_limit() // 1024
        return (
            f"{where}: a cell is longer than {kib} KiB; if a quote (\") opened in this row is never"
            " closed, close it, otherwise split the text into shorter turns"
        )
    if "unexpected end of data" in error:
        return f"{where}: a quoted cell that starts in this row is never closed; add the closing quote (\")"
    return (
        f"{where}: the row is not valid CSV ({error}); put cells holding commas, quotes or line breaks"
        " in double quotes, and double every quote inside them"
    )


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
