"""Content-addressed media files: `<media_dir>/<sha256[:2]>/<sha256><ext>`, never a client's name."""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from backend.errors import InputError

MEDIA_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wav", ".mp3", ".m4a", ".flac", ".ogg"}
)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class HashedFile:
    """A file copied into the media dir under a temporary name, with its hash and size."""

    temp_path: Path
    sha256: str
    size_bytes: int


def media_ext(name: str | Path) -> str:
    """The lower-case extension of `name` if it is a supported media type."""
    ext = Path(name).suffix.lower()
    if ext not in MEDIA_EXTENSIONS:
        raise InputError(
            f"{Path(name).name}: unsupported media type {ext or '(no extension)'!r};"
            f" upload one of {', '.join(sorted(MEDIA_EXTENSIONS))}"
        )
    return ext


def media_relpath(sha256: str, ext: str) -> Path:
    return Path(sha256[:2]) / f"{sha256}{ext}"


def copy_hashed(source: Path, media_dir: Path) -> HashedFile:
    """Copy `source` into `media_dir` under a temporary name, hashing it in the same pass."""
    if not source.is_file():
        raise InputError(f"{source.name}: media file not found or not a regular file; upload it again")
    media_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, temp = tempfile.mkstemp(dir=media_dir, prefix=".upload-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except BaseException:
        os.unlink(temp)
        raise
    return HashedFile(Path(temp), digest.hexdigest(), size)


def place(hashed: HashedFile, target: Path) -> None:
    """Move the temporary copy to `target`, or drop it when an identical file is already there."""
    if target.is_file():
        hashed.temp_path.unlink()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(hashed.temp_path, target)
