"""The official MELD CSV format (`Sr No., Utterance, Speaker, Emotion, ...`), read into turns.

Used both as a turn source for one uploaded dialogue and by the MELD corpus loader.
"""
from __future__ import annotations

from typing import NamedTuple

from backend.dialogue import Turn
from backend.errors import InputError
from backend.labels import MELD7, normalize_label
from backend.text import clean_text, csv_rows, parse_timestamp

MELD_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID", "StartTime", "EndTime")
DEFAULT_SPEAKER = "Speaker"


class MeldUtterance(NamedTuple):
    where: str  # "file:line" of the row, for messages
    turn: Turn


def _int(raw: str, column: str, where: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise InputError(f"{where}: {column} {raw!r} is not an integer") from None


def parse_meld_csv(text: str, name: str) -> dict[int, dict[int, MeldUtterance]]:
    """Dialogue_ID -> Utterance_ID -> row (episode times, MELD7 labels); errors name `name:line`."""
    rows = csv_rows(text, name)
    header = next((cells for _, cells in rows if cells), [])
    missing = [c for c in MELD_COLUMNS if c not in header]
    if missing:
        found = ", ".join(header) or "no header"
        raise InputError(f"{name}: missing MELD column(s) {', '.join(missing)}; found {found}")
    dialogues: dict[int, dict[int, MeldUtterance]] = {}
    for line, cells in rows:
        if not any(cell.strip() for cell in cells):
            continue
        where = f"{name}:{line}"
        if len(cells) < len(header):
            raise InputError(f"{where}: the row has fewer fields than the header")
        row = dict(zip(header, cells))
        dia = _int(row["Dialogue_ID"], "Dialogue_ID", where)
        utt = _int(row["Utterance_ID"], "Utterance_ID", where)
        if utt in dialogues.get(dia, {}):
            raise InputError(f"{where}: duplicate Dialogue_ID {dia} Utterance_ID {utt}")
        dialogues.setdefault(dia, {})[utt] = MeldUtterance(where, Turn(
            speaker=clean_text(row["Speaker"]) or DEFAULT_SPEAKER,
            start=parse_timestamp(row["StartTime"], where),
            end=parse_timestamp(row["EndTime"], where),
            text=clean_text(row["Utterance"]),
            label=normalize_label(row["Emotion"], MELD7, where),
        ))
    if not dialogues:
        raise InputError(f"{name}: the MELD CSV has a header but no rows")
    return dialogues
