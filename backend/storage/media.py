"""Content-addressed media files: `<media_dir>/<sha256[:2]>/<sha256><ext>`, never a client's name."""
from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from backend.errors import InputError

MEDIA_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wav", ".mp3", ".m4a", ".flac", ".ogg"}
)
_CHUNK = 1 << 20
PART_PREFIX, PART_SUFFIX = ".upload-", ".part"


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


@contextmanager
def _copy_lock(media_dir: Path, mode: int) -> Iterator[None]:
    # Copies in progress hold the media dir's flock shared; removing partial copies takes it
    # exclusively. flock, not fcntl locks: closing another descriptor does not release it.
    media_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(media_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


@contextmanager
def copying(media_dir: Path) -> Iterator[None]:
    """Hold around `copy_hashed` and `place`: partial copies are not removed meanwhile."""
    with _copy_lock(media_dir, fcntl.LOCK_SH):
        yield


def copy_hashed(source: Path, media_dir: Path) -> HashedFile:
    """Copy `source` into `media_dir` under a temporary name, hashing it in the same pass (call it
    inside `copying`)."""
    if not source.is_file():
        raise InputError(f"{source.name}: media file not found or not a regular file; upload it again")
    digest = hashlib.sha256()
    size = 0
    fd, temp = tempfile.mkstemp(dir=media_dir, prefix=PART_PREFIX, suffix=PART_SUFFIX)
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


def remove_stale_parts(media_dir: Path) -> list[Path]:
    """Delete partial copies left by a process killed mid-copy; the ones removed.

    Skipped (returns []) while any process is copying, since its part cannot be told from a stale one.
    """
    if not media_dir.is_dir():
        return []
    try:
        with _copy_lock(media_dir, fcntl.LOCK_EX | fcntl.LOCK_NB):
            stale = list(media_dir.glob(f"{PART_PREFIX}*{PART_SUFFIX}"))
            for part in stale:
                part.unlink(missing_ok=True)
            return stale
    except BlockingIOError:
        return []


def place(hashed: HashedFile, target: Path) -> None:
    """Move the temporary copy to `target`, or drop it when an identical file is already there."""
    if target.is_file():
        hashed.temp_path.unlink()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(hashed.temp_path, target)
