"""IEMOCAP from the official release layout, 6-class protocol, Session 5 held out for test."""
from __future__ import annotations

import random
import re
from pathlib import Path

from backend.dialogue import Dialogue, Turn
from backend.errors import InputError
from backend.labels import IEMOCAP_CODES

LAYOUT = (
    "expected the official IEMOCAP release layout: Session1..Session5, each with "
    "dialog/transcriptions/<dialog>.txt and dialog/EmoEvaluation/<dialog>.txt "
    "(optional media: sentences/wav/<dialog>/<utterance>.wav, dialog/avi/DivX/<dialog>.avi)"
)
TEST_SESSION = 5

_SESSION = re.compile(r"Session(\d+)")
# `Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`
_UTTERANCE = re.compile(r"(\S+)\s*\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]:\s?(.*)")
# `[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]`
_EVALUATION = re.compile(r"\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)\s+\[[^\]]*\]")


def _txt_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.txt") if not p.name.startswith("."))


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def _evaluations(path: Path) -> dict[str, str]:
    """utterance id -> raw category code, from the summary lines of one EmoEvaluation file."""
    codes: dict[str, str] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.startswith("["):
            continue  # annotator lines (C-E1:, A-E1:) and headers
        match = _EVALUATION.match(line)
        if match is None:
            raise InputError(
                f"{path}:{number}: bad evaluation line {line!r}; expected "
                "'[START - END]<TAB>UTTERANCE_ID<TAB>code<TAB>[V, A, D]'"
            )
        codes[match.group(1)] = match.group(2).lower()
    return codes


def _speaker(utterance_id: str, session: int, where: str) -> str:
    letter = utterance_id.rsplit("_", 1)[-1][:1]
    if letter not in ("F", "M"):
        raise InputError(f"{where}: utterance id {utterance_id!r} does not end in _F... or _M...")
    return f"Ses{session:02d}_{letter}"


def _dialogue(transcript: Path, evaluation: Path, session_dir: Path, session: int) -> Dialogue:
    codes = _evaluations(evaluation)
    avi = session_dir / "dialog" / "avi" / "DivX" / f"{transcript.stem}.avi"
    video = avi if avi.is_file() else None
    wav_dir = session_dir / "sentences" / "wav" / transcript.stem
    turns = []
    for number, line in enumerate(_read_lines(transcript), start=1):
        match = _UTTERANCE.fullmatch(line.strip())
        if match is None:
            continue  # not an utterance
        utterance_id, start, end, text = match.groups()
        try:
            start_s, end_s = float(start), float(end)
        except ValueError:
            raise InputError(f"{transcript}:{number}: bad time range [{start}-{end}]") from None
        label = IEMOCAP_CODES.get(codes.get(utterance_id, ""))
        if label is None:
            continue  # unevaluated, or a class outside the 6-class protocol (xxx, oth, sur, ...)
        wav = wav_dir / f"{utterance_id}.wav"
        turns.append(Turn(
            speaker=_speaker(utterance_id, session, f"{transcript}:{number}"),
            start=start_s,
            end=end_s,
            text=text.strip(),
            label=label,
            audio=wav if wav.is_file() else None,
            video=video,
        ))
    return Dialogue(transcript.stem, turns, corpus="iemocap")


def _session(session_dir: Path, session: int) -> list[Dialogue]:
    transcripts = _txt_files(session_dir / "dialog" / "transcriptions")
    if not transcripts:
        raise InputError(f"{session_dir}: no dialog/transcriptions/*.txt; {LAYOUT}")
    evaluation_dir = session_dir / "dialog" / "EmoEvaluation"
    evaluations = {p.stem: p for p in _txt_files(evaluation_dir)}
    if not evaluations:
        raise InputError(
            f"{session_dir}: has transcriptions but no EmoEvaluation files; expected one "
            f"{evaluation_dir}/<dialog>.txt per transcription"
        )
    dialogues = []
    for transcript in transcripts:
        if transcript.stem not in evaluations:
            raise InputError(f"{transcript}: no matching {evaluation_dir / transcript.name}")
        dialogue = _dialogue(transcript, evaluations[transcript.stem], session_dir, session)
        if dialogue.turns:
            dialogues.append(dialogue)
    return dialogues


def _assign_splits(dialogues: list[tuple[int, Dialogue]], validation_fraction: float, seed: int) -> None:
    train_ids = sorted(d.id for session, d in dialogues if session != TEST_SESSION)
    validation = set(random.Random(seed).sample(train_ids, round(validation_fraction * len(train_ids))))
    for session, dialogue in dialogues:
        if session == TEST_SESSION:
            dialogue.split = "test"
        else:
            dialogue.split = "validation" if dialogue.id in validation else "train"


def _sessions(root: Path) -> list[tuple[int, Path]]:
    folders = (p for p in root.glob("Session*") if p.is_dir())
    return sorted((int(m.group(1)), p) for p in folders if (m := _SESSION.fullmatch(p.name)))


def load_iemocap(root: str | Path, validation_fraction: float = 0.1, seed: int = 0) -> list[Dialogue]:
    """6-class IEMOCAP: Sessions 1-4 train (a seeded dialogue-level validation slice), 5 test."""
    root = Path(root)
    if not 0 <= validation_fraction < 1:
        raise InputError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    sessions = _sessions(root)
    if not sessions:
        raise InputError(f"{root}: no IEMOCAP sessions found; {LAYOUT}")
    dialogues = [(n, d) for n, session_dir in sessions for d in _session(session_dir, n)]
    seen: set[str] = set()
    for _, dialogue in dialogues:
        if dialogue.id in seen:
            raise InputError(f"{root}: dialogue {dialogue.id!r} appears in more than one session")
        seen.add(dialogue.id)
    _assign_splits(dialogues, validation_fraction, seed)
    return [d for _, d in dialogues]
