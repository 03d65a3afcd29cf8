"""Persistence: content-addressed media files and a versioned SQL database (SQLite or PostgreSQL)."""
from backend.storage.database import SCHEMA_VERSION, SchemaVersionError
from backend.storage.media import MEDIA_EXTENSIONS
from backend.storage.store import Media, SavedAnalysis, Store, models_key, open_store

__all__ = [
    "MEDIA_EXTENSIONS",
    "SCHEMA_VERSION",
    "Media",
    "SavedAnalysis",
    "SchemaVersionError",
    "Store",
    "models_key",
    "open_store",
]
