"""The one folder the page may fetch files from: the video being shown, its subtitle track and the
export just made.

It is the app's only Gradio `allowed_paths` entry, so the database, the media store and everything
else in the data dir are never served (a process that opens and closes the SQLite file drops the
locks SQLite holds on it; see README, Data safety). Each kind keeps its newest `KEEP_PER_KIND` files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
import secrets
import shutil
from pathlib import Path

KEEP_PER_KIND = 32  # Gradio copies a returned file into its own cache at once; these are spares


class ServedFiles:
    """Files staged under `root/<kind>/` for the page."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def video(self, media_path: str | Path) -> Path:
        """A stored video, hard-linked (copied across file systems) under its content-hash name."""
        source = Path(media_path)
        target = self._folder("videos") / source.name
        if target.exists():
            os.utime(target)  # newest again, so pruning keeps it
        else:
            staging = self._staging(target)
            try:
                os.link(source, staging)
            except OSError:
                shutil.copyfile(source, staging)
            os.replace(staging, target)
        self._prune("videos")
        return target

    def text(self, kind: str, name: str, text: str) -> Path:
        """`text` written (atomically) as `root/kind/name`."""
        target = self._folder(kind) / name
        staging = self._staging(target)
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, target)
        self._prune(kind)
        return target

    def written(self, kind: str, name: str, write: Callable[[Path], object]) -> Path:
        """`root/kind/name` as `write(path)` writes it (into a staging file, then moved in place)."""
        target = self._folder(kind) / name
        staging = self._staging(target)
        try:
            write(staging)
            os.replace(staging, target)
        finally:
            staging.unlink(missing_ok=True)
        self._prune(kind)
        return target

    def _folder(self, kind: str) -> Path:
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @staticmethod
    def _staging(target: Path) -> Path:
        return target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")

    def _prune(self, kind: str) -> None:
        files = []
        for path in (self.root / kind).iterdir():
            try:
                files.append((path.stat().st_mtime_ns, path))
            except FileNotFoundError:  # pruned by a concurrent call
                continue
        for _, path in sorted(files, reverse=True)[KEEP_PER_KIND:]:
            path.unlink(missing_ok=True)
