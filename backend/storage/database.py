"""Engines for any SQLAlchemy URL, and the ordered schema migrations applied when one opens."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    Connection,
    Engine,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url

from backend.storage.models import ANNOTATOR_MAX, REQUEST_ID_MAX, Base, SchemaVersionRow, UTCDateTime, utc_now

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Connections with this execution option open their transaction with BEGIN IMMEDIATE on SQLite:
# taking the write lock up front makes concurrent writers wait (busy_timeout) instead of failing
# with "database is locked" when a read transaction later tries to write.
WRITE_OPTION = "erc_write"


class SchemaVersionError(RuntimeError):
    """The database was written by a newer version of this code."""


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys, a busy timeout and explicit BEGINs."""
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Hand transaction control to SQLAlchemy (see `_sqlite_begin`); the pragmas must run outside one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _v1_create_all(conn: Connection) -> None:
    # v1 is the schema as first released. When a later migration changes a table, this function
    # must keep creating the v1 shape (spell those tables out here) so that v2.. still apply.
    v1 = MetaData()
    for table in Base.metadata.sorted_tables:
        if table.name != "annotations":
            table.to_metadata(v1)
    Table(
        "annotations",
        v1,
        Column("id", Integer, primary_key=True),
        Column("turn_id", ForeignKey("turns.id"), nullable=False),
        Column("annotator", String(ANNOTATOR_MAX), nullable=False, index=True),
        Column("label", String(32), nullable=False),
        Column("note", Text, nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Index("ix_annotations_turn_time", "turn_id", "created_at", "id"),
    )
    v1.create_all(conn)


def _v2_annotation_request_ids(conn: Connection) -> None:
    # A client's optional request id per save, unique when given: a retried save is found again
    # instead of stored twice (NULLs do not collide in a unique index on SQLite or PostgreSQL).
    conn.execute(text(f"ALTER TABLE annotations ADD COLUMN request_id VARCHAR({REQUEST_ID_MAX})"))
    conn.execute(text("CREATE UNIQUE INDEX ux_annotations_request_id ON annotations (request_id)"))


def _v3_adjudicated_annotations(conn: Connection) -> None:
    # Whether an adjudicator saved the annotation; every earlier annotation was an annotator's.
    conn.execute(text("ALTER TABLE annotations ADD COLUMN adjudicated BOOLEAN NOT NULL DEFAULT false"))


MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1_create_all,
    _v2_annotation_request_ids,
    _v3_adjudicated_annotations,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(engine: Engine) -> int:
    """Bring the schema at `engine` up to `SCHEMA_VERSION` in one transaction; return the version."""
    with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        if conn.dialect.name == "postgresql":
            # Serialise concurrent first opens; the lock ends with the transaction.
            conn.execute(text("SELECT pg_advisory_xact_lock(5201314)"))
        SchemaVersionRow.__table__.create(conn, checkfirst=True)
        current = conn.scalar(select(SchemaVersionRow.version).order_by(SchemaVersionRow.version.desc())) or 0
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"database {engine.url.render_as_string(hide_password=True)} has schema version {current},"
                f" newer than the {SCHEMA_VERSION} this code knows; upgrade erc-studio or point"
                " ERC_DATABASE_URL at another database"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version - 1](conn)
            conn.execute(insert(SchemaVersionRow).values(version=version, applied_at=utc_now()))
    return SCHEMA_VERSION
