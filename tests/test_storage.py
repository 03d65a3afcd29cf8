"""Storage: media by hash, analysis round trips, append-only annotations, schema versions, concurrency."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, func, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from backend.errors import InputError
from backend.labels import MELD7
from backend.schema import validate_analysis
from backend.settings import REPO_ROOT
from backend.storage import SCHEMA_VERSION, SchemaVersionError, Store, open_store
from backend.storage.models import (
    AnalysisRow,
    AnnotationRow,
    Base,
    SchemaVersionRow,
    TurnRow,
)
from tests.concurrency import run_at_once
from tests.pg import postgres_url  # noqa: F401 (a fixture used by name)

MODELS = {"mister_e": {"name": "mister-e", "version": "v1"}, "farcer": {"name": "farcer", "version": "v2"}}


def _probs(top: str) -> dict[str, float]:
    return {label: (0.4 if label == top else 0.1) for label in MELD7}


def make_doc(sha256: str, profile: str = "offline") -> dict:
    turns = []
    for i, (speaker, top) in enumerate([("Ross", "joy"), ("Rachel", "anger"), ("Ross", "neutral")]):
        turns.append(
            {
                "index": i,
                "speaker": speaker,
                "start": float(i),
                "end": i + 0.9,
                "text": f"line {i}",
                "face": {"found": i != 2, "box": [1, 2, 3, 4] if i != 2 else None},
                "mister_e": {
                    "label": top,
                    "probs": _probs(top),
                    "gate": {"speech": 0.5, "text": 0.5, "cross": 0.0},
                    "experts": {"speech": _probs(top), "text": _probs("neutral"), "cross": None},
                },
                "farcer": {"label": top, "probs": _probs(top)},
            }
        )
    return {
        "schema": "erc.analysis/1",
        "media": {"path": "clip.mp4", "sha256": sha256, "duration_s": 3.0, "has_audio": True},
        "profile": profile,
        "labels": list(MELD7),
        "models": MODELS,
        "turns": turns,
        "timings_s": {"total": 1.5},
        "warnings": [],
    }


def counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = Base.metadata.sorted_tables
            return {t.name: conn.scalar(select(func.count()).select_from(t)) for t in tables}
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'erc.sqlite3'}"


@pytest.fixture
def store(sqlite_url, tmp_path):
    store = Store(sqlite_url, tmp_path / "media")
    yield store
    store.close()


@pytest.fixture
def video(tmp_path) -> Path:
    path = tmp_path / "upload" / "clip.mp4"
    path.parent.mkdir()
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4096))
    return path


@pytest.fixture
def saved(store, video):
    media = store.add_media(video)
    doc = make_doc(media.sha256)
    return doc, store.save_analysis(doc, media.sha256, source="subtitles")


def test_media_is_stored_under_its_hash_once(store, tmp_path):
    uploads = tmp_path / "a" / "b"
    uploads.mkdir(parents=True)
    (tmp_path / "evil.mp4").write_bytes(b"same bytes")
    (uploads / "other name.MOV").write_bytes(b"same bytes")

    first = store.add_media(uploads / "../../evil.mp4")
    second = store.add_media(uploads / "other name.MOV")

    assert first == second
    assert first.path == tmp_path / "media" / first.sha256[:2] / f"{first.sha256}.mp4"
    assert first.path.read_bytes() == b"same bytes" and first.size_bytes == 10
    stored = [p for p in (tmp_path / "media").rglob("*") if p.is_file()]
    assert stored == [first.path]
    assert store.get_media(first.sha256) == first
    assert counts(f"sqlite:///{tmp_path / 'erc.sqlite3'}")["media"] == 1


def test_unsupported_or_missing_media_writes_nothing(store, sqlite_url, tmp_path):
    (tmp_path / "run.exe").write_bytes(b"MZ")
    with pytest.raises(InputError, match="unsupported media type '.exe'"):
        store.add_media(tmp_path / "run.exe")
    with pytest.raises(InputError, match="not found"):
        store.add_media(tmp_path / "gone.mp4")
    with pytest.raises(InputError, match="not in the store"):
        store.get_media("0" * 64)
    assert not any(p.is_file() for p in (tmp_path / "media").rglob("*"))
    assert counts(sqlite_url)["media"] == 0


def test_analysis_round_trip(store, saved, sqlite_url):
    doc, (dialogue_id, turn_ids) = saved
    sha = doc["media"]["sha256"]

    found = store.find_analysis(sha, "offline", dict(reversed(MODELS.items())))

    validate_analysis(found)
    assert found["dialogue_id"] == dialogue_id
    assert [t["turn_id"] for t in found["turns"]] == turn_ids
    assert [{k: v for k, v in t.items() if k != "turn_id"} for t in found["turns"]] == doc["turns"]
    assert {k: v for k, v in found.items() if k not in ("dialogue_id", "turns")} == {
        k: v for k, v in doc.items() if k != "turns"
    }
    assert list(found["turns"][0]["mister_e"]["probs"]) == list(MELD7)
    assert store.analysis(dialogue_id) == found
    assert store.find_analysis(sha, "paper", MODELS) is None
    newer_farcer = {**MODELS, "farcer": {"name": "farcer", "version": "v3"}}
    assert store.find_analysis(sha, "offline", newer_farcer) is None
    assert store.find_analysis("f" * 64, "offline", MODELS) is None
    rows = counts(sqlite_url)
    assert (rows["dialogues"], rows["turns"], rows["model_versions"], rows["predictions"]) == (1, 3, 2, 6)
    [listed] = store.dialogues()
    assert listed["dialogue_id"] == dialogue_id and listed["media_sha256"] == sha
    assert (listed["source"], listed["profile"], listed["turns"], listed["annotated_turns"]) == (
        "subtitles", "offline", 3, 0
    )
    assert datetime.fromisoformat(listed["created_at"]).utcoffset() == timedelta(0)


def test_save_analysis_rejects_unknown_media(store):
    doc = make_doc("a" * 64)
    with pytest.raises(InputError, match="not in the store"):
        store.save_analysis(doc, "a" * 64)
    with pytest.raises(InputError, match="not 'bbbb"):
        store.save_analysis(doc, "b" * 64)


def test_failure_midway_through_save_leaves_no_rows(store, video, sqlite_url):
    media = store.add_media(video)
    before = counts(sqlite_url)
    seen_partial = []

    def fail_on_last_insert(mapper, connection, target):
        seen_partial.append(connection.scalar(select(func.count()).select_from(TurnRow)))
        raise RuntimeError("disk full")

    event.listen(AnalysisRow, "before_insert", fail_on_last_insert)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            store.save_analysis(make_doc(media.sha256), media.sha256)
    finally:
        event.remove(AnalysisRow, "before_insert", fail_on_last_insert)

    assert seen_partial == [3], "the failure must come after the dialogue and its turns were written"
    assert counts(sqlite_url) == before
    assert store.save_analysis(make_doc(media.sha256), media.sha256).dialogue_id > 0


def test_annotations_are_appended_and_the_latest_is_current(store, saved, monkeypatch):
    doc, (dialogue_id, turn_ids) = saved
    t0, t1, t2 = turn_ids
    clock = datetime(2025, 1, 1, tzinfo=UTC)
    monkeypatch.setattr("backend.storage.store.utc_now", lambda: clock)

    first = store.add_annotation(t0, "anger", "  ann ", "  too loud ")
    tied = store.add_annotation(t0, "happy", "bob")  # same time: the later id wins
    clock -= timedelta(hours=1)
    store.add_annotation(t0, "fear", "ann")  # written last but timed earlier: not current
    store.add_annotation(t1, "sad", "ann", None)

    assert first == {
        "annotation_id": first["annotation_id"],
        "turn_id": t0,
        "label": "anger",
        "annotator": "ann",
        "note": "too loud",
        "created_at": "2025-01-01T00:00:00+00:00",
        "adjudicated": False,
    }
    assert tied["created_at"] == first["created_at"] and tied["annotation_id"] > first["annotation_id"]
    assert [a["label"] for a in store.history(t0)] == ["fear", "anger", "joy"]
    assert store.history(t2) == []
    assert store.current_labels(dialogue_id) == {t0: "joy", t1: "sadness"}
    assert store.dialogues()[0]["annotated_turns"] == 2


def test_the_current_label_is_the_majority_unless_adjudicated(store, saved):
    _, (dialogue_id, (t0, t1, t2)) = saved
    store.add_annotation(t0, "joy", "ann")
    store.add_annotation(t0, "anger", "ann")  # ann's latest counts: anger
    store.add_annotation(t0, "anger", "bob")
    store.add_annotation(t0, "fear", "cy")
    store.add_annotation(t1, "joy", "ann")
    store.add_annotation(t1, "fear", "bob")  # a tie: the most recent
    store.add_annotation(t2, "fear", "ann")
    store.add_annotation(t2, "fear", "bob")
    store.add_annotation(t2, "sadness", "ada", adjudicated=True)
    store.add_annotation(t2, "fear", "cy")  # after the adjudication, still outvoted by it
    assert store.current_labels(dialogue_id) == {t0: "anger", t1: "fear", t2: "sadness"}
    assert store.current_labels(dialogue_id, annotator="ann") == {t0: "anger", t1: "joy", t2: "fear"}
    current = [(r["annotator"], r["label"]) for r in store.annotations(dialogue_id=dialogue_id) if r["is_current"]]
    assert current == [("bob", "anger"), ("bob", "fear"), ("ada", "sadness")]
    assert [r["adjudicated"] for r in store.history(t2)] == [False, False, True, False]


def test_annotation_listing_carries_turn_context(store, saved, video, tmp_path):
    doc, (dialogue_id, turn_ids) = saved
    other = tmp_path / "other.mp4"
    other.write_bytes(b"another video")
    other_media = store.add_media(other)
    _, other_turns = store.save_analysis(make_doc(other_media.sha256), other_media.sha256)
    store.add_annotation(turn_ids[1], "disgust", "ann", "not anger")
    store.add_annotation(turn_ids[1], "fear", "bob")
    store.add_annotation(other_turns[0], "fear", "ann")

    rows = store.annotations(media_sha256=doc["media"]["sha256"])
    assert [(r["annotator"], r["label"], r["is_current"]) for r in rows] == [
        ("ann", "disgust", False), ("bob", "fear", True)
    ]
    row = rows[0]
    assert (row["dialogue_id"], row["index"], row["speaker"], row["text"], row["start"], row["end"]) == (
        dialogue_id, 1, "Rachel", "line 1", 1.0, 1.9
    )
    mister_e = row["predictions"]["mister-e"]
    assert (mister_e["version"], mister_e["label"]) == ("v1", "anger")
    assert mister_e["gate"] == doc["turns"][1]["mister_e"]["gate"]
    assert row["predictions"]["farcer"]["probs"] == doc["turns"][1]["farcer"]["probs"]
    assert [r["turn_id"] for r in store.annotations(annotator="ann")] == [turn_ids[1], other_turns[0]]
    assert [r["turn_id"] for r in store.annotations(label="fear", dialogue_id=dialogue_id)] == [turn_ids[1]]
    assert store.annotations(annotator="nobody") == []


@pytest.mark.parametrize(
    "turn, label, annotator, note, message",
    [
        (999, "joy", "ann", "", "turn 999 does not exist"),
        ("abc", "joy", "ann", "", "whole number"),
        (None, "excitement", "ann", "", "unknown emotion label 'excitement'"),
        (None, 3, "ann", "", "must be text"),
        (None, "joy", "   ", "", "annotator name is empty"),
        (None, "joy", "x" * 65, "", "at most 64"),
        (None, "joy", "ann", "n" * 2001, "at most 2000"),
    ],
)
def test_invalid_annotation_writes_nothing(store, saved, sqlite_url, turn, label, annotator, note, message):
    turn_id = saved[1].turn_ids[0] if turn is None else turn
    before = counts(sqlite_url)
    with pytest.raises(InputError, match=message):
        store.add_annotation(turn_id, label, annotator, note)
    assert counts(sqlite_url) == before


def test_unknown_ids_are_input_errors(store):
    with pytest.raises(InputError, match="turn 5 does not exist"):
        store.history(5)
    with pytest.raises(InputError, match="dialogue 5 does not exist"):
        store.current_labels(5)
    with pytest.raises(InputError, match="no stored analysis"):
        store.analysis(5)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(store, sqlite_url):
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    with store._engine.begin() as conn, pytest.raises(IntegrityError, match="FOREIGN KEY"):
        conn.execute(
            insert(AnnotationRow).values(
                turn_id=12345, annotator="ann", label="joy", note="", created_at=datetime.now(UTC)
            )
        )


def test_schema_version_is_recorded_and_newer_databases_are_refused(store, sqlite_url, tmp_path):
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        assert conn.scalars(select(SchemaVersionRow.version)).all() == list(range(1, SCHEMA_VERSION + 1))
        newer = {"version": SCHEMA_VERSION + 1, "applied_at": datetime.now(UTC)}
        conn.execute(insert(SchemaVersionRow).values(**newer))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        Store(sqlite_url, tmp_path / "media")


def test_reopening_keeps_data(store, saved, sqlite_url, tmp_path):
    doc, (dialogue_id, _) = saved
    store.close()
    reopened = Store(sqlite_url, tmp_path / "media")
    try:
        assert reopened.find_analysis(doc["media"]["sha256"], "offline", MODELS)["dialogue_id"] == dialogue_id
        assert counts(sqlite_url)["schema_version"] == SCHEMA_VERSION
    finally:
        reopened.close()


def test_open_store_uses_settings(data_dir, video):
    store = open_store()
    try:
        media = store.add_media(video)
    finally:
        store.close()
    assert (data_dir / "erc.sqlite3").is_file()
    assert media.path == data_dir / "media" / media.sha256[:2] / f"{media.sha256}.mp4"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request, sqlite_url) -> str:
    return sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def test_concurrent_annotations_are_all_kept(any_url, tmp_path):
    threads, per_thread = 8, 25
    store = Store(any_url, tmp_path / "media")
    try:
        video = tmp_path / "clip.mp4"
        video.write_bytes(os.urandom(256))
        media = store.add_media(video)
        dialogue_id, turn_ids = store.save_analysis(make_doc(media.sha256), media.sha256)
        # JSON must come back with its key order (probs are keyed by the labels, in order).
        validate_analysis(store.find_analysis(media.sha256, "offline", MODELS))

        def annotate(worker: int, i: int) -> None:
            store.add_annotation(turn_ids[i % len(turn_ids)], MELD7[i % 7], f"annotator-{worker}", str(i))

        run_at_once(annotate, threads, per_thread)
        rows = store.annotations(dialogue_id=dialogue_id)
        assert len(rows) == threads * per_thread
        assert len({r["annotation_id"] for r in rows}) == threads * per_thread
        assert sum(r["is_current"] for r in rows) == len(turn_ids)
        assert {r["annotator"] for r in rows} == {f"annotator-{w}" for w in range(threads)}
        with store._engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM annotations")) == threads * per_thread
    finally:
        store.close()


@pytest.mark.parametrize(
    "turn_id, message",
    [
        (1.5, "turn id must be a whole number, got 1.5"),
        ("1.5", "whole number"),
        (float("nan"), "whole number"),
        (True, "whole number"),
        (0, "turn id 0 is out of range (ids run from 1 to 2147483647)"),
        (-2, "turn id -2 is out of range"),
        (2**31, "turn id 2147483648 is out of range"),
        (2**70, "out of range"),
        ("9" * 5000, "out of range"),
    ],
)
def test_turn_ids_are_whole_numbers_in_range_on_every_backend(any_url, tmp_path, turn_id, message):
    store = Store(any_url, tmp_path / "media")
    try:
        video = tmp_path / "clip.mp4"
        video.write_bytes(os.urandom(256))
        media = store.add_media(video)
        _, (first, *_) = store.save_analysis(make_doc(media.sha256), media.sha256)
        with pytest.raises(InputError, match=re.escape(message)):
            store.add_annotation(turn_id, "joy", "ann")
        with pytest.raises(InputError, match=re.escape(message)):
            store.history(turn_id)
        assert store.add_annotation(float(first), "joy", "ann")["turn_id"] == first, "2.0 is turn 2"
        assert len(store.history(first)) == 1
    finally:
        store.close()


@pytest.mark.parametrize(
    "annotator, note, message",
    [
        ("ann\x00", "", "annotator name contains the control character U+0000"),
        ("ann\nbob", "", "control character U+000A"),
        ("ann", "a note\x00with a NUL", "the note contains a NUL character (U+0000)"),
    ],
)
def test_nul_characters_are_refused_on_every_backend(any_url, tmp_path, annotator, note, message):
    store = Store(any_url, tmp_path / "media")
    try:
        video = tmp_path / "clip.mp4"
        video.write_bytes(os.urandom(256))
        media = store.add_media(video)
        _, (turn_id, *_) = store.save_analysis(make_doc(media.sha256), media.sha256)
        with pytest.raises(InputError, match=re.escape(message)):
            store.add_annotation(turn_id, "joy", annotator, note)
        assert store.history(turn_id) == []
        kept = store.add_annotation(turn_id, "joy", "ann", "line one\nline two")
        assert kept["note"] == "line one\nline two", "line breaks in notes are fine"
    finally:
        store.close()


def test_a_repeated_request_id_returns_the_first_save(any_url, tmp_path):
    store = Store(any_url, tmp_path / "media")
    try:
        video = tmp_path / "clip.mp4"
        video.write_bytes(os.urandom(256))
        media = store.add_media(video)
        _, (t0, t1, _) = store.save_analysis(make_doc(media.sha256), media.sha256)
        first = store.add_annotation(t0, "happy", "ann", "note", request_id="3f2c-save-1")
        assert store.add_annotation(t0, "joy", " ann ", " note ", request_id="3f2c-save-1") == first
        with pytest.raises(InputError, match="request id '3f2c-save-1' was already used for another save"):
            store.add_annotation(t1, "joy", "ann", "note", request_id="3f2c-save-1")
        with pytest.raises(InputError, match="request id 'has space' is not valid"):
            store.add_annotation(t0, "joy", "ann", request_id="has space")
        store.add_annotation(t0, "joy", "ann", request_id="")  # empty: no request id
        store.add_annotation(t0, "joy", "ann")

        def retry(worker: int, i: int) -> None:  # every worker sends the same ten saves
            saved = store.add_annotation(t1, "fear", "bob", str(i), request_id=f"bob-{i}")
            assert saved["note"] == str(i)

        run_at_once(retry, threads=6, per_thread=10)
        assert [r["note"] for r in store.history(t1)] == [str(i) for i in range(10)]
        assert len(store.history(t0)) == 3
    finally:
        store.close()


def test_a_first_release_database_migrates_and_keeps_its_labels(tmp_path, sqlite_url):
    from backend.storage.database import MIGRATIONS, make_engine

    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        MIGRATIONS[0](conn)
        conn.execute(insert(SchemaVersionRow).values(version=1, applied_at=datetime.now(UTC)))
    engine.dispose()
    store = Store(sqlite_url, tmp_path / "media")
    try:
        video = tmp_path / "clip.mp4"
        video.write_bytes(os.urandom(256))
        media = store.add_media(video)
        _, (turn_id, *_) = store.save_analysis(make_doc(media.sha256), media.sha256)
        store.add_annotation(turn_id, "joy", "ann", request_id="r1")
        assert store.add_annotation(turn_id, "joy", "ann", request_id="r1")["annotation_id"] == 1
    finally:
        store.close()
    fresh_url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    Store(fresh_url, tmp_path / "media").close()

    def shape(url: str) -> tuple:
        engine = create_engine(url)
        try:
            columns = inspect(engine).get_columns("annotations")
            indexes = inspect(engine).get_indexes("annotations")
            return (
                [(c["name"], str(c["type"]), c["nullable"]) for c in columns],
                sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in indexes),
            )
        finally:
            engine.dispose()

    assert shape(sqlite_url) == shape(fresh_url)
    assert counts(sqlite_url)["schema_version"] == SCHEMA_VERSION == 3


# A copy into the media store, killed while it writes (the source blocks after its first chunk).
_KILLED_COPY = """
import sys
from pathlib import Path
from backend.storage import Store

class Stalling:
    def __init__(self, real): self.real, self.reads = real, 0
    def __enter__(self): return self
    def __exit__(self, *exc): self.real.close()
    def read(self, n):
        self.reads += 1
        if self.reads == 2:
            print("copying", flush=True)
            sys.stdin.read()  # blocks until killed
        return self.real.read(n)

real_open = Path.open

def stalling_open(self, *args, **kwargs):
    opened = real_open(self, *args, **kwargs)
    return Stalling(opened) if self.suffix == ".mp4" else opened

Path.open = stalling_open
store = Store(sys.argv[1], Path(sys.argv[2]))
store.add_media(Path(sys.argv[3]))
"""


def test_a_copy_killed_midway_leaves_a_part_that_the_next_start_removes(tmp_path, sqlite_url):
    video = tmp_path / "big.mp4"
    video.write_bytes(os.urandom(3 << 20))
    media_dir = tmp_path / "media"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_COPY, sqlite_url, str(media_dir), str(video)],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "copying"
    finally:
        proc.kill()
        proc.wait(timeout=60)
    [part] = media_dir.glob(".upload-*.part")
    assert part.stat().st_size > 0
    Store(sqlite_url, media_dir).close()
    assert not part.exists()
    assert [p for p in media_dir.rglob("*") if p.is_file()] == []


def test_parts_being_written_are_kept(tmp_path, sqlite_url):
    from backend.storage.media import copying

    media_dir = tmp_path / "media"
    media_dir.mkdir()
    part = media_dir / ".upload-live.part"
    with copying(media_dir):  # as another process does while it copies
        part.write_bytes(b"half a video")
        Store(sqlite_url, media_dir).close()
        assert part.exists()
    Store(sqlite_url, media_dir).close()
    assert not part.exists()
