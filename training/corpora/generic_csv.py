"""The generic corpus CSV, also the export format for annotators' corrections.

Columns: dialogue_id, turn, speaker, text, label, and optionally audio, video, face, start, end, split.
Media paths are relative to the CSV's folder; rows group by dialogue_id and order by turn. `face` is
an image of the speaker's face on that turn (a crop, like a FER2013 image), so that faces can be
paired with text on purpose, as `audio` pairs speech.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path

from backend.dialogue import Dialogue, Turn
from backend.errors import InputError
from backend.labels import MELD7, normalize_label

SPLITS: tuple[str, ...] = ("train", "validation", "test")
REQUIRED = ("dialogue_id", "turn", "speaker", "text", "label")
OPTIONAL = ("audio", "video", "face", "start", "end", "split")
DEFAULT_SPLIT = "train"


def _cell(row: dict[str, str | None], column: str) -> str:
    return (row.get(column) or "").strip()


def _media(raw: str, folder: Path, column: str, where: str) -> Path | None:
    if not raw:
        return None
    path = (folder / raw).resolve()
    if not path.is_file():
        raise InputError(
            f"{where}: {column} file {raw!r} not found (looked for {path}); "
            "media paths are relative to the CSV's folder"
        )
    return path


def _seconds(raw: str, column: str, where: str) -> float | None:
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"{where}: {column} {raw!r} is not a number of seconds") from None


def _turn_number(raw: str, where: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"{where}: turn {raw!r} is not an integer") from None


def _split(raw: str, where: str) -> str:
    split = raw.lower() or DEFAULT_SPLIT
    if split not in SPLITS:
        raise InputError(f"{where}: split {raw!r} is not one of {', '.join(SPLITS)}")
    return split


def _open_rows(path: Path) -> csv.DictReader:
    if not path.is_file():
        raise InputError(f"{path}: corpus CSV not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}; "
            f"required {', '.join(REQUIRED)} (optional {', '.join(OPTIONAL)})"
        )
    return reader


def load_corpus_csv(path: str | Path, labels: tuple[str, ...] | list[str] = MELD7) -> list[Dialogue]:
    """Dialogues from a corpus CSV; labels are canonicalised against `labels`."""
    path = Path(path)
    reader = _open_rows(path)
    folder = path.resolve().parent
    turns: dict[str, dict[int, tuple[int, Turn]]] = {}
    splits: dict[str, tuple[int, str]] = {}
    line = 2
    for row in reader:
        row_line, line = line, reader.line_num + 1
        where = f"{path}:{row_line}"
        dialogue_id = _cell(row, "dialogue_id")
        if not dialogue_id:
            raise InputError(f"{where}: empty dialogue_id")
        number = _turn_number(_cell(row, "turn"), where)
        if number in turns.get(dialogue_id, {}):
            first = turns[dialogue_id][number][0]
            raise InputError(
                f"{where}: duplicate turn {number} of dialogue {dialogue_id!r} (first at line {first})"
            )
        split = _split(_cell(row, "split"), where)
        first_line, first_split = splits.setdefault(dialogue_id, (row_line, split))
        if split != first_split:
            raise InputError(
                f"{where}: dialogue {dialogue_id!r} is in split {split!r} here "
                f"but {first_split!r} at line {first_line}"
            )
        start, end = _seconds(_cell(row, "start"), "start", where), _seconds(_cell(row, "end"), "end", where)
        if start is not None and end is not None and end < start:
            raise InputError(f"{where}: end {end} is before start {start}")
        turns.setdefault(dialogue_id, {})[number] = (row_line, Turn(
            speaker=_cell(row, "speaker"),
            start=start,
            end=end,
            text=(row.get("text") or "").strip(),
            label=normalize_label(_cell(row, "label"), labels, where),
            audio=_media(_cell(row, "audio"), folder, "audio", where),
            video=_media(_cell(row, "video"), folder, "video", where),
            face=_media(_cell(row, "face"), folder, "face", where),
        ))
    return [
        Dialogue(id_, [by_number[n][1] for n in sorted(by_number)], split=splits[id_][1], corpus="csv")
        for id_, by_number in turns.items()
    ]


def _relative(path: Path | None, folder: Path) -> str:
    if path is None:
        return ""
    try:
        return os.path.relpath(Path(path).resolve(), folder)
    except ValueError:  # another drive on Windows
        return str(Path(path).resolve())


def _seconds_cell(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def write_corpus_csv(path: str | Path, dialogues: Iterable[Dialogue]) -> Path:
    """Write `dialogues` as a corpus CSV that `load_corpus_csv` reads back; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.resolve().parent
    rows, seen = [], set()
    for dialogue in dialogues:
        if dialogue.id in seen:
            raise InputError(f"dialogue id {dialogue.id!r} appears twice; ids must be unique in a corpus")
        seen.add(dialogue.id)
        for number, turn in enumerate(dialogue.turns):
            if turn.label is None:
                raise InputError(
                    f"dialogue {dialogue.id!r} turn {number} has no label; label every turn before exporting"
                )
            rows.append({
                "dialogue_id": dialogue.id, "turn": number, "speaker": turn.speaker, "text": turn.text,
                "label": turn.label, "audio": _relative(turn.audio, folder),
                "video": _relative(turn.video, folder), "face": _relative(turn.face, folder), "start": _seconds_cell(turn.start),
                "end": _seconds_cell(turn.end), "split": dialogue.split or "",
            })
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REQUIRED + OPTIONAL)
        writer.writeheader()
        writer.writerows(rows)
    return path
