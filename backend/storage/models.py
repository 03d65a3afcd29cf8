"""The database tables, as SQLAlchemy 2 declarative models. Rows never leave `backend.storage`."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Float, ForeignKey, Index, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ANNOTATOR_MAX = 64
NOTE_MAX = 2000
REQUEST_ID_MAX = 64


def utc_now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores it naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; store timezone-aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class SchemaVersionRow(Base):
    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    applied_at: Mapped[datetime]


class MediaRow(Base):
    __tablename__ = "media"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    ext: Mapped[str] = mapped_column(String(8))
    size_bytes: Mapped[int]
    created_at: Mapped[datetime]


class DialogueRow(Base):
    __tablename__ = "dialogues"

    id: Mapped[int] = mapped_column(primary_key=True)
    media_id: Mapped[int] = mapped_column(ForeignKey("media.id"), index=True)
    source: Mapped[str] = mapped_column(String(64))
    labels: Mapped[list[str]]
    created_at: Mapped[datetime]


class TurnRow(Base):
    __tablename__ = "turns"
    __table_args__ = (UniqueConstraint("dialogue_id", "index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dialogue_id: Mapped[int] = mapped_column(ForeignKey("dialogues.id"))
    index: Mapped[int]
    speaker: Mapped[str] = mapped_column(String(200))
    start: Mapped[float | None] = mapped_column(Float)
    end: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", "profile"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(200))
    profile: Mapped[str] = mapped_column(String(32))


class PredictionRow(Base):
    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("turn_id", "model_version_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    turn_id: Mapped[int] = mapped_column(ForeignKey("turns.id"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    label: Mapped[str] = mapped_column(String(32))
    probs: Mapped[dict[str, Any]]
    extras: Mapped[dict[str, Any]]


class AnnotationRow(Base):
    """Append-only: a correction is a new row; a turn's label follows backend.current_label."""

    __tablename__ = "annotations"
    __table_args__ = (
        Index("ix_annotations_turn_time", "turn_id", "created_at", "id"),
        Index("ux_annotations_request_id", "request_id", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    turn_id: Mapped[int] = mapped_column(ForeignKey("turns.id"))
    annotator: Mapped[str] = mapped_column(String(ANNOTATOR_MAX), index=True)
    label: Mapped[str] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    # The client's id for this save (schema v2): a retry with the same id returns this row.
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX))
    # Saved by an adjudicator (schema v3): the turn's final label, over the annotators' majority.
    adjudicated: Mapped[bool] = mapped_column(default=False, server_default=false())


class AnalysisRow(Base):
    """A finished `erc.analysis/1` document, found again by media, profile and model versions."""

    __tablename__ = "analyses"
    __table_args__ = (Index("ix_analyses_lookup", "media_id", "profile", "models_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    media_id: Mapped[int] = mapped_column(ForeignKey("media.id"))
    dialogue_id: Mapped[int] = mapped_column(ForeignKey("dialogues.id"), unique=True)
    profile: Mapped[str] = mapped_column(String(32))
    models_key: Mapped[str] = mapped_column(Text)
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
