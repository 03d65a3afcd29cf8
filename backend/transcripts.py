"""Turn sources: subtitles (SRT/WebVTT), MELD and generic CSVs, the UI table; and turn validation.

Every reader returns `list[Turn]` with times in seconds. Problems in a file are `InputError`s that
start with `name:line` so a user can find and fix the row.
"""
from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from backend.dialogue import Turn
from backend.errors import InputError
from backend.labels import MELD7, normalize_label
from backend.meld_csv import DEFAULT_SPEAKER, parse_meld_csv
from backend.text import clean_text, csv_rows, decode_text, parse_timestamp

MIN_TURN_S = 0.5  # zero-length turns are widened to this so they carry some audio
MAX_LISTED_OVERLAPS = 10

TRANSCRIPT_COLUMNS = ("speaker", "start", "end", "text")

_CUE_TIMING = re.compile(r"^\s*(-?[\d:.,]+)\s*-->\s*(-?[\d:.,]+)")
_VOICE_TAG = re.compile(r"<v(?:\.[^\s>]*)?\s+([^>]+)>")
_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")
_SPEAKER_PREFIX = re.compile(r"^\s*(?:-\s*)?([^\W\d_][\w.'\-]*(?: [\w.'\-]+){0,2})\s*:\s+(\S.*)$", re.DOTALL)

def _check_turn(turn: Turn, where: str, require_text: bool = True) -> None:
    """Errors every source shares: missing, negative or reversed times, empty text."""
    if turn.start is None or turn.end is None:
        raise InputError(f"{where}: the start or end time is missing; give both, in seconds or hh:mm:ss,mmm")
    if turn.start < 0 or turn.end < 0:
        raise InputError(f"{where}: times cannot be negative (start {turn.start:g} s, end {turn.end:g} s)")
    if turn.end < turn.start:
        raise InputError(
            f"{where}: the end ({turn.end:g} s) is before the start ({turn.start:g} s); swap or fix the times"
        )
    if require_text and not turn.text:
        raise InputError(f"{where}: the text is empty; type what is said or delete this turn")
    for field, value in (("speaker", turn.speaker), ("text", turn.text)):
        if "\x00" in (value or ""):
            raise InputError(f"{where}: the {field} contains a NUL character (U+0000); remove it")


# --- subtitles -------------------------------------------------------------------------------------


def _cue_text(lines: list[str]) -> tuple[str, str]:
    """Speaker and clean text of a cue's text lines (voice tag or `Name:` prefix set the speaker)."""
    raw = "\n".join(lines)
    voice = _VOICE_TAG.search(raw)
    text = html.unescape(_TAG.sub("", raw))
    speaker = clean_text(voice[1]) if voice else DEFAULT_SPEAKER
    prefix = _SPEAKER_PREFIX.match(text)
    if prefix and not voice:
        speaker, text = prefix[1].strip(), prefix[2]
    return speaker, clean_text(text)


def _subtitle_blocks(text: str) -> Iterable[tuple[int, list[str]]]:
    """(first line number, lines) for each blank-line separated block."""
    block: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            yield start, block
            block = []
    if block:
        yield start, block


def _parse_subtitles(text: str, name: str) -> list[Turn]:
    is_vtt = text.lstrip().startswith("WEBVTT")
    cues: list[tuple[str, float, float, list[str]]] = []
    for first_line, lines in _subtitle_blocks(text):
        timing_at = next((i for i, line in enumerate(lines) if "-->" in line), None)
        if timing_at is None:
            if is_vtt and lines[0].split(maxsplit=1)[0] in {"WEBVTT", "NOTE", "STYLE", "REGION"}:
                continue
            if not cues:
                raise InputError(
                    f"{name}:{first_line}: expected a cue timing line like "
                    "'00:00:01,000 --> 00:00:02,500'; check the file is SRT or WebVTT"
                )
            cues[-1][3].extend(lines)  # a blank line inside a cue's text
            continue
        line = first_line + timing_at
        where = f"{name}:{line} (cue {len(cues) + 1})"
        timing = _CUE_TIMING.match(lines[timing_at])
        if timing is None:
            raise InputError(f"{where}: cannot read the cue timing {lines[timing_at].strip()!r}")
        start, end = (parse_timestamp(t, where) for t in timing.groups())
        cues.append((where, start, end, lines[timing_at + 1:]))
    turns = []
    for where, start, end, lines in cues:
        speaker, cue_text = _cue_text(lines)
        turn = Turn(speaker=speaker, start=start, end=end, text=cue_text)
        _check_turn(turn, where)
        turns.append(turn)
    if not turns:
        raise InputError(f"{name}: no subtitle cues found; check the file is SRT or WebVTT")
    return turns


def read_subtitles(path: str | Path) -> list[Turn]:
    """Turns from an SRT or WebVTT file (format told by content, not by extension)."""
    path = Path(path)
    return _parse_subtitles(decode_text(_read_bytes(path), path.name), path.name)


# --- CSV files -------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise InputError(f"{path.name}: cannot read the file ({err.strerror}); upload it again") from None


def _csv_rows(text: str, name: str, required: Sequence[str], fold_case: bool) -> Iterable[tuple[int, dict]]:
    """(line number, row) for each non-blank row, after checking the header has `required`."""
    rows = csv_rows(text, name)
    header = [h.strip() for h in next(rows, (1, []))[1]]
    keys = [h.lower() for h in header] if fold_case else header
    missing = [c for c in required if c not in keys]
    if missing:
        raise InputError(
            f"{name}: missing column(s) {', '.join(missing)}; found {', '.join(header) or 'no header'}."
            f" The first row must name the columns: {','.join(required)}"
        )
    for line, cells in rows:
        if not any(cell.strip() for cell in cells):
            continue
        yield line, dict(zip(keys, (cell.strip() for cell in cells)))


def _parse_meld(text: str, name: str, dialogue_id: int | None) -> list[Turn]:
    dialogues = parse_meld_csv(text, name)
    available = _id_list(sorted(dialogues))
    if dialogue_id is None:
        if len(dialogues) > 1:
            raise InputError(f"{name} holds {len(dialogues)} dialogues; choose one Dialogue_ID: {available}")
        dialogue_id = next(iter(dialogues))
    if dialogue_id not in dialogues:
        raise InputError(f"{name}: no dialogue with Dialogue_ID {dialogue_id}; available: {available}")
    rows = [dialogues[dialogue_id][utt] for utt in sorted(dialogues[dialogue_id])]
    for where, turn in rows:
        _check_turn(turn, where)
    offset = min(turn.start for _, turn in rows)  # MELD times are episode times
    return [replace(t, start=round(t.start - offset, 3), end=round(t.end - offset, 3)) for _, t in rows]


def _id_list(ids: list[int], limit: int = 30) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def read_meld_csv(path: str | Path, dialogue_id: int | None = None) -> list[Turn]:
    """One dialogue of an official MELD CSV, times rebased to start at 0, labels in MELD7."""
    path = Path(path)
    return _parse_meld(decode_text(_read_bytes(path), path.name), path.name, dialogue_id)


def _row_turn(row: dict, where: str, labels: Sequence[str], require_text: bool = True) -> Turn:
    """A turn from a row with speaker, start, end, text and an optional label."""
    times = [_seconds(row.get(key), where) for key in ("start", "end")]
    raw_label = _cell(row.get("label"))
    turn = Turn(
        speaker=clean_text(_cell(row.get("speaker"))) or DEFAULT_SPEAKER,
        start=times[0],
        end=times[1],
        text=clean_text(_cell(row.get("text"))),
        label=normalize_label(raw_label, tuple(labels), where=where) if raw_label else None,
    )
    _check_turn(turn, where, require_text)
    return turn


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _seconds(value: Any, where: str) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return float(value)
    text = _cell(value)
    return parse_timestamp(text, where) if text else None


def _parse_transcript(text: str, name: str, labels: Sequence[str]) -> list[Turn]:
    turns = [
        _row_turn(row, f"{name}:{line}", labels)
        for line, row in _csv_rows(text, name, TRANSCRIPT_COLUMNS, fold_case=True)
    ]
    if not turns:
        raise InputError(f"{name}: the transcript has a header but no rows")
    return turns


def read_transcript_csv(path: str | Path, labels: Sequence[str] = MELD7) -> list[Turn]:
    """Turns from a `speaker,start,end,text[,label]` CSV (times in seconds or hh:mm:ss,mmm)."""
    path = Path(path)
    return _parse_transcript(decode_text(_read_bytes(path), path.name), path.name, labels)


# --- the UI table and dispatch ---------------------------------------------------------------------


def _table_rows(rows: Any) -> list[dict]:
    """Rows of a DataFrame, a list of dicts or a list of lists as dicts with lower-case keys."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        rows = rows.to_dict(orient="records")
    rows = list(rows or [])
    if rows and all(isinstance(r, dict) for r in rows):
        return [{str(k).strip().lower(): v for k, v in r.items()} for r in rows]
    if all(isinstance(r, (list, tuple)) for r in rows):
        if rows and [_cell(c).lower() for c in rows[0][:4]] == list(TRANSCRIPT_COLUMNS):
            rows = rows[1:]
        return [dict(zip((*TRANSCRIPT_COLUMNS, "label"), r)) for r in rows]
    raise InputError("the turn table must be rows of speaker, start, end, text (a list of lists or dicts)")


def turns_from_table(rows: Any, labels: Sequence[str] = MELD7) -> list[Turn]:
    """Turns from the UI's editable table (DataFrame, dicts or lists); blank rows are skipped. A row
    may lack text (say voice-activity turns only partly typed in): the models' text parts skip it."""
    turns = []
    for number, row in enumerate(_table_rows(rows), start=1):
        if any(_cell(v) for v in row.values()):
            turns.append(_row_turn(row, f"table row {number}", labels, require_text=False))
    return turns


def read_turns(path: str | Path, dialogue_id: int | None = None) -> list[Turn]:
    """Turns from SRT, WebVTT, MELD CSV or `speaker,start,end,text` CSV, told apart by content."""
    path = Path(path)
    text = decode_text(_read_bytes(path), path.name)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{path.name}: the file is empty")
    header = {h.strip() for h in next(csv_rows(lines[0], path.name))[1]}
    if {"Utterance", "Dialogue_ID"} <= header:
        return _parse_meld(text, path.name, dialogue_id)
    if set(TRANSCRIPT_COLUMNS) <= {h.lower() for h in header}:
        return _parse_transcript(text, path.name, MELD7)
    if lines[0].lstrip().startswith("WEBVTT") or any("-->" in line for line in lines[:20]):
        return _parse_subtitles(text, path.name)
    raise InputError(
        f"{path.name}: not a recognised turn file; upload SRT or WebVTT subtitles, a MELD CSV,"
        " or a CSV with the columns speaker,start,end,text[,label]"
    )


# --- validation ------------------------------------------------------------------------------------


def validate_turns(
    turns: Sequence[Turn], duration_s: float | None, max_turns: int, source: str, require_text: bool = True
) -> tuple[list[Turn], list[str]]:
    """Check turns against the media; return them sorted by start, plus warnings for the user.

    Errors: no turns, too many, missing/negative/reversed times, empty text (unless `require_text`
    is off, as for voice-activity turns), a start at or after the
    media end. Fixed with a warning: an end past the media end is clipped; a zero-length turn is
    widened to MIN_TURN_S (within the media) so it has audio; overlaps are listed, not changed.
    """
    if not turns:
        raise InputError(f"{source}: no turns found; add at least one turn with speaker, times and text")
    if len(turns) > max_turns:
        raise InputError(
            f"{source} has {len(turns)} turns but the limit is {max_turns}; split the dialogue into shorter"
            " parts (or raise ERC_MAX_TURNS)"
        )
    warnings: list[str] = []
    clipped, widened = [], []
    checked: list[tuple[int, Turn]] = []
    for number, turn in enumerate(turns, start=1):
        where = f"{source}, turn {number}"
        _check_turn(turn, where, require_text)
        start, end = turn.start, turn.end
        if duration_s is not None:
            if start >= duration_s:
                raise InputError(
                    f"{where}: starts at {start:.2f} s, at or after the end of the media"
                    f" ({duration_s:.2f} s);"
                    " check that the turns belong to this video and that the times are in seconds"
                )
            if end > duration_s:
                clipped.append(number)
                end = duration_s
        if end == start:
            widened.append(number)
            end = start + MIN_TURN_S if duration_s is None else min(start + MIN_TURN_S, duration_s)
        checked.append((number, replace(turn, end=end)))
    if clipped:
        warnings.append(
            f"{source}: turn(s) {_id_list(clipped)} end after the media ({duration_s:.2f} s); clipped"
        )
    if widened:
        warnings.append(f"{source}: turn(s) {_id_list(widened)} had no length; widened to {MIN_TURN_S:g} s")
    checked.sort(key=lambda item: item[1].start)
    overlaps = [
        f"{a} and {b} by {ta.end - tb.start:.2f} s"
        for (a, ta), (b, tb) in pairwise(checked)
        if tb.start < ta.end
    ]
    if overlaps:
        more = len(overlaps) - MAX_LISTED_OVERLAPS
        listed = ", ".join(overlaps[:MAX_LISTED_OVERLAPS]) + (f" and {more} more" if more > 0 else "")
        warnings.append(f"{source}: overlapping turns (kept as they are): {listed}")
    return [turn for _, turn in checked], warnings
