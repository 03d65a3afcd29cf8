"""The repository API over the database: media, analyses, predictions and append-only annotations.

Human labels belong to the turn, not to one analysis: turns of the same media with the same times (to
the millisecond) and text are the same turn (`_same_turns`), so a video analysed again (with another
model version, say) shows the labels saved on any of its analyses, and each label is compared with
every version's prediction of that turn.

Every method runs in its own short transaction and returns plain dicts or dataclasses, so callers
never hold sessions or live rows. Timestamps are UTC, ISO 8601 strings.
"""
from __future__ import annotations

import json
import operator
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from backend.current_label import current_by_turn
from backend.errors import InputError
from backend.labels import normalize_label
from backend.schema import validate_analysis
from backend.settings import Settings, get_settings
from backend.storage.database import WRITE_OPTION, make_engine, migrate
from backend.storage.media import copy_hashed, copying, media_ext, media_relpath, place, remove_stale_parts
from backend.storage.models import (
    ANNOTATOR_MAX,
    NOTE_MAX,
    REQUEST_ID_MAX,
    AnalysisRow,
    AnnotationRow,
    DialogueRow,
    MediaRow,
    ModelVersionRow,
    PredictionRow,
    TurnRow,
    utc_now,
)

Row = TypeVar("Row", MediaRow, ModelVersionRow)
ID_MAX = 2**31 - 1  # ids are INTEGER columns: 32-bit on PostgreSQL, the narrower of the two backends
_OLDEST_FIRST = (AnnotationRow.created_at, AnnotationRow.id)  # a turn's annotations, as saved
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{REQUEST_ID_MAX}}}")


@dataclass(frozen=True)
class Media:
    """A stored media file; `path` is inside the media dir and named by the content hash."""

    sha256: str
    path: Path
    ext: str
    size_bytes: int
    created_at: str


class SavedAnalysis(NamedTuple):
    """Ids of what `Store.save_analysis` wrote; `turn_ids` follow the document's turn order."""

    dialogue_id: int
    turn_ids: list[int]


def models_key(models: Mapping[str, Mapping[str, Any]]) -> str:
    """A canonical key for a set of models shaped like a document's `models` ({slot: {name, version}})."""
    try:
        return json.dumps(sorted([slot, str(m["name"]), str(m["version"])] for slot, m in models.items()))
    except (KeyError, TypeError, AttributeError):
        raise InputError(f"models must map a slot to {{name, version}}, got {models!r}") from None


class Store:
    """Media files under `media_dir` and everything else in the database at `url`."""

    def __init__(self, url: str, media_dir: Path) -> None:
        self.media_dir = Path(media_dir).absolute()
        remove_stale_parts(self.media_dir)
        self._engine = make_engine(url)
        try:
            self.schema_version = migrate(self._engine)
        except BaseException:
            self._engine.dispose()
            raise
        self._read = sessionmaker(self._engine, expire_on_commit=False)
        writer = self._engine.execution_options(**{WRITE_OPTION: True})
        self._write = sessionmaker(writer, expire_on_commit=False)

    def close(self) -> None:
        self._engine.dispose()

    def add_media(self, path: str | Path) -> Media:
        """Copy a file in under its sha256 (once per content) and record it."""
        source = Path(path)
        ext = media_ext(source)
        with copying(self.media_dir):
            hashed = copy_hashed(source, self.media_dir)
            try:
                with self._write.begin() as session:
                    row = _get_or_create(
                        session,
                        MediaRow,
                        {"sha256": hashed.sha256},
                        {"ext": ext, "size_bytes": hashed.size_bytes, "created_at": utc_now()},
                    )
                    place(hashed, self.media_dir / media_relpath(row.sha256, row.ext))
            finally:
                hashed.temp_path.unlink(missing_ok=True)
        return self._media(row)

    def get_media(self, sha256: str) -> Media:
        with self._read() as session:
            return self._media(_media_row(session, sha256))

    def _media(self, row: MediaRow) -> Media:
        path = self.media_dir / media_relpath(row.sha256, row.ext)
        return Media(row.sha256, path, row.ext, row.size_bytes, row.created_at.isoformat())

    def save_analysis(self, doc: dict, media_sha256: str, source: str = "pipeline") -> SavedAnalysis:
        """Store an `erc.analysis/1` document with its dialogue, turns and predictions, all or nothing."""
        validate_analysis(doc)
        if doc["media"]["sha256"] != media_sha256:
            raise InputError(
                f"analysis is of media {doc['media']['sha256']!r}, not {media_sha256!r};"
                " save it with its own media"
            )
        now = utc_now()
        with self._write.begin() as session:
            media = _media_row(session, media_sha256)
            labels = list(doc["labels"])
            dialogue = DialogueRow(media_id=media.id, source=source, labels=labels, created_at=now)
            session.add(dialogue)
            session.flush()
            turns = [
                TurnRow(
                    dialogue_id=dialogue.id,
                    index=t["index"],
                    speaker=t["speaker"],
                    start=t["start"],
                    end=t["end"],
                    text=t["text"],
                )
                for t in doc["turns"]
            ]
            session.add_all(turns)
            session.flush()
            versions = {
                slot: _get_or_create(
                    session,
                    ModelVersionRow,
                    {"name": str(m["name"]), "version": str(m["version"]), "profile": doc["profile"]},
                )
                for slot, m in doc["models"].items()
            }
            session.add_all(
                _prediction_row(row.id, versions[slot].id, t[slot])
                for row, t in zip(turns, doc["turns"])
                for slot in versions
                if slot in t
            )
            session.add(
                AnalysisRow(
                    media_id=media.id,
                    dialogue_id=dialogue.id,
                    profile=doc["profile"],
                    models_key=models_key(doc["models"]),
                    document=doc,
                    created_at=now,
                )
            )
        return SavedAnalysis(dialogue.id, [t.id for t in turns])

    def find_analysis(
        self, sha256: str, profile: str, models: Mapping[str, Mapping[str, Any]]
    ) -> dict | None:
        """The latest stored document for this media, profile and models, or None.

        `models` is shaped like a document's `models`; the document comes back with `dialogue_id`
        and a `turn_id` on each turn.
        """
        query = (
            select(AnalysisRow)
            .join(MediaRow, AnalysisRow.media_id == MediaRow.id)
            .where(
                MediaRow.sha256 == sha256,
                AnalysisRow.profile == profile,
                AnalysisRow.models_key == models_key(models),
            )
            .order_by(AnalysisRow.created_at.desc(), AnalysisRow.id.desc())
            .limit(1)
        )
        with self._read() as session:
            row = session.scalar(query)
            return None if row is None else _document(session, row)

    def analysis(self, dialogue_id: int) -> dict:
        """The stored document of a dialogue (as `find_analysis` returns it)."""
        dialogue_id = _as_id(dialogue_id, "dialogue id")
        with self._read() as session:
            row = session.scalar(select(AnalysisRow).where(AnalysisRow.dialogue_id == dialogue_id))
            if row is None:
                raise InputError(f"dialogue {dialogue_id} has no stored analysis; analyse its video again")
            return _document(session, row)

    def dialogues(self) -> list[dict]:
        """Every stored dialogue, newest first, with turn and annotated-turn counts and, from its analysis,
        the uploaded file's name, the duration, the turn source's kind and the model versions ({slot:
        version}); None (or {}) where the analysis did not record them."""
        n_turns = (
            select(TurnRow.dialogue_id, func.count().label("n")).group_by(TurnRow.dialogue_id).subquery()
        )
        document = AnalysisRow.document
        facts = (
            document["media"]["name"].as_string(),
            document["media"]["duration_s"].as_float(),
            document["turn_source"]["kind"].as_string(),
            document["models"],
        )
        query = (
            select(DialogueRow, MediaRow.sha256, AnalysisRow.profile, n_turns.c.n, *facts)
            .join(MediaRow, DialogueRow.media_id == MediaRow.id)
            .outerjoin(AnalysisRow, AnalysisRow.dialogue_id == DialogueRow.id)
            .outerjoin(n_turns, n_turns.c.dialogue_id == DialogueRow.id)
            .order_by(DialogueRow.created_at.desc(), DialogueRow.id.desc())
        )
        with self._read() as session:
            # Labelled turns count wherever the label was saved (the same turn in any analysis).
            labelled = _same_turns(session, session.scalars(select(AnnotationRow.turn_id).distinct()).all())
            of_turns = select(TurnRow.id, TurnRow.dialogue_id).where(TurnRow.id.in_(list(labelled)))
            dialogue_of = dict(session.execute(of_turns).all())
            annotated = Counter(dialogue_of.values())
            return [
                {
                    "dialogue_id": d.id,
                    "media_sha256": sha,
                    "source": d.source,
                    "labels": list(d.labels),
                    "profile": profile,
                    "turns": turns or 0,
                    "annotated_turns": annotated[d.id],
                    "created_at": d.created_at.isoformat(),
                    "file_name": name,
                    "duration_s": duration,
                    "turn_source": turn_source,
                    "models": {slot: m.get("version") for slot, m in (models or {}).items()},
                }
                for d, sha, profile, turns, name, duration, turn_source, models in session.execute(query)
            ]

    def add_annotation(
        self,
        turn_id: int,
        label: str,
        annotator: str,
        note: str | None = "",
        request_id: str | None = None,
        adjudicated: bool = False,
    ) -> dict:
        """Append a label for a turn (an adjudicator's when `adjudicated`); the turn's current label
        follows backend.current_label. Invalid input writes nothing.

        With a `request_id` (the client's id for this save) the save is idempotent: sending it again,
        say after the reply was lost, returns the first save's row instead of storing another.
        """
        turn_id = _as_id(turn_id, "turn id")
        annotator = _clean_annotator(annotator)
        note = _clean_note(note)
        request_id = _clean_request_id(request_id)
        if not isinstance(label, str):
            raise InputError(f"turn {turn_id}: the label must be text, got {type(label).__name__}")
        with self._write.begin() as session:
            labels = session.scalar(
                select(DialogueRow.labels)
                .join(TurnRow, TurnRow.dialogue_id == DialogueRow.id)
                .where(TurnRow.id == turn_id)
            )
            if labels is None:
                raise InputError(f"turn {turn_id} does not exist; reload the dialogue and try again")
            row = AnnotationRow(
                turn_id=turn_id,
                annotator=annotator,
                label=normalize_label(label, labels, where=f"turn {turn_id}"),
                note=note,
                created_at=utc_now(),
                request_id=request_id,
                adjudicated=bool(adjudicated),
            )
            earlier = None if request_id is None else _by_request_id(session, request_id)
            if earlier is None:
                try:
                    with session.begin_nested():
                        session.add(row)
                except IntegrityError:  # the same request, saved meanwhile by another connection
                    earlier = None if request_id is None else _by_request_id(session, request_id)
                    if earlier is None:
                        raise
        return _annotation(row) if earlier is None else _replayed(earlier, row)

    def history(self, turn_id: int) -> list[dict]:
        """Every annotation of a turn, oldest first (its current label: backend.current_label)."""
        turn_id = _as_id(turn_id, "turn id")
        with self._read() as session:
            if session.get(TurnRow, turn_id) is None:
                raise InputError(f"turn {turn_id} does not exist; reload the dialogue and try again")
            same = list(_same_turns(session, [turn_id]))
            rows = session.scalars(
                select(AnnotationRow)
                .where(AnnotationRow.turn_id.in_(same))
                .order_by(*_OLDEST_FIRST)
            )
            return [{**_annotation(r), "turn_id": turn_id} for r in rows]

    def current_labels(self, dialogue_id: int, annotator: str | None = None) -> dict[int, str]:
        """{turn_id: label} for the annotated turns of a dialogue (turns without annotations are absent):
        the current label (backend.current_label), or with `annotator` that annotator's latest. Labels
        saved on the same turns in other analyses of the video count (`_same_turns`)."""
        dialogue_id = _as_id(dialogue_id, "dialogue id")
        with self._read() as session:
            if session.get(DialogueRow, dialogue_id) is None:
                raise InputError(f"dialogue {dialogue_id} does not exist; pick one from the list")
            own = session.scalars(select(TurnRow.id).where(TurnRow.dialogue_id == dialogue_id)).all()
            same = _same_turns(session, own)
            query = select(AnnotationRow).where(AnnotationRow.turn_id.in_(list(same)))
            if annotator is not None:
                query = query.where(AnnotationRow.annotator == annotator.strip())
            rows = [
                {**_annotation(a), "turn_id": same[a.turn_id]} for a in session.scalars(query.order_by(*_OLDEST_FIRST))
            ]
        if annotator is not None:
            return {r["turn_id"]: r["label"] for r in rows}  # oldest first: the latest one stays
        return {turn_id: row["label"] for turn_id, row in current_by_turn(rows).items()}

    def annotations(
        self,
        media_sha256: str | None = None,
        dialogue_id: int | None = None,
        annotator: str | None = None,
        label: str | None = None,
    ) -> list[dict]:
        """Annotations, oldest first, with their turn's text, speaker, times and model predictions.

        Filters combine with AND; `label` matches the stored (canonical) label exactly. A row's turn is
        the turn as one analysis has it (`_same_turns`): with `dialogue_id`, that dialogue's turn, so
        labels saved on other analyses of the video are included; else the first analysis's. Its
        `predictions` hold each model's prediction in that analysis under the model's name, and other
        versions' predictions of the same turn under "name @version". Each row's `is_current` says
        whether it decides its turn's label (backend.current_label), among all of the turn's
        annotations, filtered or not.
        """
        filters = []
        if media_sha256 is not None:
            filters.append(MediaRow.sha256 == media_sha256)
        if annotator is not None:
            filters.append(AnnotationRow.annotator == annotator.strip())
        if label is not None:
            filters.append(AnnotationRow.label == label)
        with self._read() as session:
            if dialogue_id is not None:
                dialogue_id = _as_id(dialogue_id, "dialogue id")
                own = session.scalars(select(TurnRow.id).where(TurnRow.dialogue_id == dialogue_id)).all()
                same = _same_turns(session, own)
                filters.append(AnnotationRow.turn_id.in_(list(same)))
            query = _in_context(select(AnnotationRow, MediaRow.sha256)).where(*filters)
            rows = session.execute(query.order_by(*_OLDEST_FIRST)).all()
            if dialogue_id is None:
                same = _same_turns(session, {a.turn_id for a, _ in rows})
            of_turns = select(AnnotationRow).where(AnnotationRow.turn_id.in_(list(same))).order_by(*_OLDEST_FIRST)
            everyone = [{**_annotation(a), "turn_id": same[a.turn_id]} for a in session.scalars(of_turns)]
            current = {row["annotation_id"] for row in current_by_turn(everyone).values()}
            turns = {t.id: t for t in session.scalars(select(TurnRow).where(TurnRow.id.in_(set(same.values()))))}
            predictions = _predictions(session, same)
        out = []
        for a, sha in rows:
            turn = turns[same[a.turn_id]]
            out.append({
                **_annotation(a),
                "turn_id": turn.id,
                "is_current": a.id in current,
                "dialogue_id": turn.dialogue_id,
                "media_sha256": sha,
                "index": turn.index,
                "speaker": turn.speaker,
                "start": turn.start,
                "end": turn.end,
                "text": turn.text,
                "predictions": predictions.get(turn.id, {}),
            })
        return out


def open_store(settings: Settings | None = None) -> Store:
    """The store configured by `backend.settings` (creating the data dir)."""
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Store(settings.resolved_database_url, settings.media_dir)


def _get_or_create(session: Session, model: type[Row], key: dict, values: dict | None = None) -> Row:
    """The row matching `key`, inserted if absent; safe against a concurrent insert of the same key."""
    query = select(model).filter_by(**key)
    row = session.scalar(query)
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = model(**key, **(values or {}))
            session.add(row)
    except IntegrityError:
        row = session.scalar(query)
        if row is None:
            raise
    return row


def _media_row(session: Session, sha256: str) -> MediaRow:
    row = session.scalar(select(MediaRow).where(MediaRow.sha256 == sha256))
    if row is None:
        raise InputError(f"media {sha256!r} is not in the store; upload the video again")
    return row


def _prediction_row(turn_id: int, model_version_id: int, pred: dict) -> PredictionRow:
    extras = {k: v for k, v in pred.items() if k not in ("label", "probs")}
    return PredictionRow(
        turn_id=turn_id,
        model_version_id=model_version_id,
        label=pred["label"],
        probs=pred["probs"],
        extras=extras,
    )


def _document(session: Session, row: AnalysisRow) -> dict:
    turn_ids = session.scalars(
        select(TurnRow.id).where(TurnRow.dialogue_id == row.dialogue_id).order_by(TurnRow.index)
    ).all()
    doc = row.document
    turns = [{**t, "turn_id": turn_id} for t, turn_id in zip(doc["turns"], turn_ids, strict=True)]
    return {**doc, "dialogue_id": row.dialogue_id, "turns": turns}


def _in_context(query: Select) -> Select:
    """`query` over annotations joined to their turn, dialogue and media."""
    return (
        query.join(TurnRow, AnnotationRow.turn_id == TurnRow.id)
        .join(DialogueRow, TurnRow.dialogue_id == DialogueRow.id)
        .join(MediaRow, DialogueRow.media_id == MediaRow.id)
    )


def _predictions(session: Session, same: Mapping[int, int]) -> dict[int, dict[str, dict]]:
    """{representative turn id: {model name: {version, label, probs, ...extras}}} over the turns of
    `same` ({turn id: its representative}): the representative's own predictions under the model's
    name, another version's (from another analysis) under "name @version"."""
    query = (
        select(PredictionRow, ModelVersionRow.name, ModelVersionRow.version)
        .join(ModelVersionRow, PredictionRow.model_version_id == ModelVersionRow.id)
        .where(PredictionRow.turn_id.in_(list(same)))
        .order_by(PredictionRow.id)
    )
    own: dict[int, dict[str, dict]] = {}
    others: dict[int, dict[str, dict]] = {}
    for p, name, version in session.execute(query):
        pred = {"version": version, "label": p.label, "probs": p.probs, **p.extras}
        rep = same[p.turn_id]
        if p.turn_id == rep:
            own.setdefault(rep, {})[name] = pred
        else:
            others.setdefault(rep, {})[f"{name} @{version}"] = pred
    out: dict[int, dict[str, dict]] = {}
    for rep in own.keys() | others.keys():
        mine = own.get(rep, {})
        versions = {(name, m["version"]) for name, m in mine.items()}
        extra = {k: v for k, v in others.get(rep, {}).items() if (k.rsplit(" @", 1)[0], v["version"]) not in versions}
        out[rep] = {**mine, **extra}
    return out


def _turn_key(turn: TurnRow, media_id: int) -> tuple:
    """What makes two analyses' turns the same turn: the media, the times to the millisecond, the text."""
    def ms(t: float | None) -> int | None:
        return None if t is None else round(t * 1000)

    return media_id, ms(turn.start), ms(turn.end), turn.text


def _same_turns(session: Session, turn_ids: Iterable[int]) -> dict[int, int]:
    """{turn id: its representative} for every turn, of any analysis, that is the same turn
    (`_turn_key`) as one of `turn_ids`; the representative is the lowest of `turn_ids` with that key."""
    given = set(turn_ids)
    if not given:
        return {}
    medias = select(DialogueRow.media_id).join(TurnRow, TurnRow.dialogue_id == DialogueRow.id).where(
        TurnRow.id.in_(given)
    )
    turns = session.execute(
        select(TurnRow, DialogueRow.media_id)
        .join(DialogueRow, TurnRow.dialogue_id == DialogueRow.id)
        .where(DialogueRow.media_id.in_(medias))
    ).all()
    reps: dict[tuple, int] = {}
    for turn, media_id in turns:
        if turn.id in given:
            key = _turn_key(turn, media_id)
            reps[key] = min(reps.get(key, turn.id), turn.id)
    keyed = ((turn.id, _turn_key(turn, media_id)) for turn, media_id in turns)
    return {turn_id: reps[key] for turn_id, key in keyed if key in reps}


def _by_request_id(session: Session, request_id: str) -> AnnotationRow | None:
    return session.scalar(select(AnnotationRow).where(AnnotationRow.request_id == request_id))


def _replayed(earlier: AnnotationRow, retry: AnnotationRow) -> dict:
    """The first save of a request id, if `retry` asks for the same save."""
    fields = ("turn_id", "label", "annotator", "note", "adjudicated")
    if any(getattr(earlier, f) != getattr(retry, f) for f in fields):
        raise InputError(
            f"request id {retry.request_id!r} was already used for another save (turn {earlier.turn_id},"
            f" label {earlier.label}, by {earlier.annotator}); send a new request id with each new save"
        )
    return _annotation(earlier)


def _annotation(row: AnnotationRow) -> dict:
    return {
        "annotation_id": row.id,
        "turn_id": row.turn_id,
        "label": row.label,
        "annotator": row.annotator,
        "note": row.note,
        "created_at": row.created_at.isoformat(),
        "adjudicated": bool(row.adjudicated),
    }


def _as_id(value: Any, what: str) -> int:
    """A row id from an int, a whole float (JSON clients may send 2.0) or a string of digits: never
    rounded, and within the range of the id columns."""
    if isinstance(value, str) and value.strip().isdecimal():
        digits = value.strip()
        if len(digits) > len(str(ID_MAX)):  # also spares int() thousands of digits
            raise _out_of_range(what, digits[:24] + "...")
        number = int(digits)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        try:
            if isinstance(value, (bool, float)):
                raise TypeError
            number = operator.index(value)
        except TypeError:
            raise InputError(f"{what} must be a whole number, got {value!r}") from None
    if not 1 <= number <= ID_MAX:
        raise _out_of_range(what, number)
    return number


def _out_of_range(what: str, shown: object) -> InputError:
    return InputError(
        f"{what} {shown} is out of range (ids run from 1 to {ID_MAX}); use an id from the dialogue"
    )


def _clean_annotator(annotator: Any) -> str:
    name = annotator.strip() if isinstance(annotator, str) else ""
    if not name:
        raise InputError("annotator name is empty; enter your name or initials before saving a label")
    if len(name) > ANNOTATOR_MAX:
        raise InputError(f"annotator name has {len(name)} characters; use at most {ANNOTATOR_MAX}")
    control = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise InputError(
            f"annotator name contains the control character U+{ord(control):04X}; use letters, digits"
            " and punctuation only"
        )
    return name


def _clean_note(note: Any) -> str:
    if note is None:
        return ""
    if not isinstance(note, str):
        raise InputError(f"the note must be text, got {type(note).__name__}")
    note = note.strip()
    if len(note) > NOTE_MAX:
        raise InputError(f"the note has {len(note)} characters; shorten it to at most {NOTE_MAX}")
    if "\x00" in note:  # PostgreSQL text cannot hold it; refused on every backend alike
        raise InputError("the note contains a NUL character (U+0000), which cannot be stored; remove it")
    return note


def _clean_request_id(request_id: Any) -> str | None:
    if request_id is None or request_id == "":
        return None
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise InputError(
            f"request id {str(request_id)[:80]!r} is not valid; use up to {REQUEST_ID_MAX} letters, digits"
            " or . _ : - (a UUID works), a new one for each save"
        )
    return request_id
