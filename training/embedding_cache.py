"""On-disk embedding cache keyed by (encoder id, version, utterance content).

Layout: `root/<encoder id>/<version>/<shard>.npz`, each shard holding `keys` [N] and `vectors`
[N, D]. A shard is written once, atomically (tmp file + rename), and never changed, so the index
(key -> shard, row) is rebuilt by reading the shards' keys; concurrent writers cannot corrupt it.
"""
from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm


def text_key(text: str) -> str:
    """Cache key of a transcript."""
    return hashlib.sha256(b"text\0" + text.encode("utf-8")).hexdigest()


def file_key(path: Path) -> str:
    """Cache key of a media file: resolved path + modification time + size (no read of the content)."""
    path = Path(path).resolve()
    stat = path.stat()
    return hashlib.sha256(f"file\0{path}\0{stat.st_mtime_ns}\0{stat.st_size}".encode()).hexdigest()


def array_key(audio: np.ndarray, sr: int) -> str:
    """Cache key of in-memory audio: hash of the samples, their dtype/shape and the rate."""
    audio = np.ascontiguousarray(audio)
    header = f"array\0{audio.dtype}\0{audio.shape}\0{sr}\0".encode()
    return hashlib.sha256(header + audio.tobytes()).hexdigest()


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", part).strip("._") or "_"


class EmbeddingCache:
    """Vectors of one encoder version, looked up by content key."""

    def __init__(self, root: Path, encoder_id: str, version: str):
        self.dir = Path(root) / _safe(encoder_id) / _safe(version)
        self._index: dict[str, tuple[Path, int]] = {}
        self._loaded: dict[Path, np.ndarray] = {}
        self._scanned: set[Path] = set()

    def _scan(self) -> None:
        if not self.dir.is_dir():
            return
        for shard in sorted(self.dir.glob("*.npz")):
            if shard in self._scanned:
                continue
            with np.load(shard) as data:
                for row, key in enumerate(data["keys"].tolist()):
                    self._index.setdefault(key, (shard, row))
            self._scanned.add(shard)

    def _vectors(self, shard: Path) -> np.ndarray:
        if shard not in self._loaded:
            with np.load(shard) as data:
                self._loaded[shard] = data["vectors"]
        return self._loaded[shard]

    def __len__(self) -> int:
        self._scan()
        return len(self._index)

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached vectors of those `keys` that are present (misses are simply absent)."""
        self._scan()
        found = {}
        for key in keys:
            if key in self._index:
                shard, row = self._index[key]
                found[key] = self._vectors(shard)[row]
        return found

    def put_many(self, vectors: dict[str, np.ndarray]) -> None:
        """Store `vectors` (same length each) as one new shard."""
        if not vectors:
            return
        keys = list(vectors)
        stacked = np.stack([np.asarray(vectors[k], dtype=np.float32) for k in keys])
        self.dir.mkdir(parents=True, exist_ok=True)
        shard = self.dir / f"{uuid.uuid4().hex}.npz"
        tmp = shard.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.array(keys), vectors=stacked)
        os.replace(tmp, shard)
        self._loaded[shard] = stacked
        self._scanned.add(shard)
        for row, key in enumerate(keys):
            self._index[key] = (shard, row)

    def encode_cached(
        self,
        items: Sequence,
        encode_fn: Callable[[list], np.ndarray],
        batch_size: int = 32,
        key_fn: Callable[[object], str] | None = None,
        flush_every: int = 4096,
        desc: str | None = None,
    ) -> np.ndarray:
        """Vectors for `items` in order, calling `encode_fn(batch) -> [len(batch), D]` only on misses.

        `key_fn` maps an item to its key (default: `text_key`, for transcripts; use `file_key` for
        audio paths). Items with equal keys are encoded once. New vectors are saved every `flush_every`.
        """
        key_fn = key_fn or _text_item_key
        keys = [key_fn(item) for item in items]
        found = self.get_many(set(keys))
        todo: dict[str, object] = {}
        for key, item in zip(keys, items):
            if key not in found:
                todo.setdefault(key, item)
        pending: dict[str, np.ndarray] = {}
        todo_keys = list(todo)
        batches = range(0, len(todo_keys), batch_size)
        for start in tqdm(batches, desc=desc or f"encode {self.dir.parent.name}", disable=not todo_keys):
            batch_keys = todo_keys[start : start + batch_size]
            encoded = np.asarray(encode_fn([todo[k] for k in batch_keys]), dtype=np.float32)
            if encoded.shape[0] != len(batch_keys):
                raise ValueError(f"encode_fn returned {encoded.shape[0]} vectors for {len(batch_keys)} items")
            pending.update(zip(batch_keys, encoded))
            if len(pending) >= flush_every:
                self.put_many(pending)
                found.update(pending)
                pending = {}
        self.put_many(pending)
        found.update(pending)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[k] for k in keys])


def _text_item_key(item: object) -> str:
    if not isinstance(item, str):
        raise TypeError(f"items must be strings unless a key_fn is given, got {type(item).__name__}")
    return text_key(item)
