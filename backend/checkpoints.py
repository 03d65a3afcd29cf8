"""The one checkpoint format: a folder of weight files with `manifest.json` beside them.

    manifest.json = {format, model, config, labels, files: {relpath: sha256}, components: {name: ...},
                     created_at, data, metrics}

`model` is a registry name ("mister-e", "farcer", "face-encoder", ...). `config` is whatever the
model's builder needs (its config dataclass as a dict and the like). `components` names everything
the checkpoint depends on besides its own files, each a dict with a `kind`:

- {"kind": "checkpoint", "model": M, "version": V} another checkpoint, found in the model store;
  with "path": P it is nested in this folder (P/manifest.json), as MiSTER-E's stage-1 encoders are.
- {"kind": "package", "package": P, "version": V, "files": {relpath: sha256}} pretrained weights
  shipped inside an installed Python package (see backend.packaged).
- {"kind": "hub", "name": N} a Hugging Face model id (the paper profile), read from the local cache.
- {"kind": "code", "name": N} a fixed feature extractor, versioned by name (e.g. eGeMAPS features).

The version id is a hash of the manifest's identity (format, model, config, labels, files and
components), so changing a weight file, the config or any component gives a new version, while
`created_at`, `data` and `metrics` (what the model card reports) do not. Each file's sha256 is
checked when a checkpoint is read, so a changed or truncated file fails loudly.

Training writes checkpoints with `write_checkpoint`; the app only reads them with `read_checkpoint`.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from backend.errors import ModelUnavailableError

FORMAT = "erc.checkpoint/1"
MANIFEST = "manifest.json"
CARD = "MODEL_CARD.md"
COMPONENT_KINDS = ("checkpoint", "package", "hub", "code")
_IDENTITY = ("format", "model", "config", "labels", "files", "components")
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def first_bad_file(folder: Path, files: Mapping[str, str]) -> tuple[Path, str] | None:
    """The first of `files` ({relpath: sha256}) under `folder` that is "missing" or "changed", else None."""
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return path, "missing"
        if sha256_of(path) != expected:
            return path, "changed"
    return None


def manifest_version(manifest: Mapping[str, Any]) -> str:
    """The version id: 12 hex digits of the sha256 of the manifest's identity fields."""
    identity = {key: manifest.get(key) for key in _IDENTITY}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder whose manifest was read (and, by default, whose files were verified)."""

    path: Path
    manifest: dict

    @property
    def model(self) -> str:
        return self.manifest["model"]

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.manifest["labels"])

    @property
    def components(self) -> dict[str, dict]:
        return self.manifest["components"]

    @property
    def created_at(self) -> str:
        return self.manifest["created_at"]

    @property
    def data(self) -> dict:
        return self.manifest.get("data") or {}

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics") or {}

    @cached_property
    def version(self) -> str:
        return manifest_version(self.manifest)

    def file(self, name: str) -> Path:
        """A file the manifest lists (ModelUnavailableError for any other name)."""
        if name not in self.manifest["files"]:
            raise ModelUnavailableError(
                f"{self.path}: the {self.model} checkpoint has no file {name!r} "
                f"(it has {', '.join(sorted(self.manifest['files'])) or 'none'})"
            )
        return self.path / name

    def has_file(self, name: str) -> bool:
        return name in self.manifest["files"]

    def nested(self, name: str) -> Checkpoint:
        """The component `name` stored inside this folder, checked against the version recorded here."""
        component = self.components.get(name)
        if component is None or component.get("kind") != "checkpoint" or "path" not in component:
            raise ModelUnavailableError(f"{self.path}: the {self.model} checkpoint has no nested component {name!r}")
        inner = read_checkpoint(self.path / component["path"])
        check_component(self, name, inner)
        return inner

    def versions(self) -> dict[str, str]:
        """This checkpoint's version and every component's, for analyses to record exactly what ran."""
        out = {self.model: self.version}
        for name, component in self.components.items():
            kind = component["kind"]
            if kind == "checkpoint":
                out[name] = component["version"]
            elif kind == "package":
                out[name] = f"{component['package']}=={component['version']}"
            else:  # hub or code: the name is all there is
                out[name] = component["name"]
        return out


def check_component(owner: Checkpoint, name: str, found: Checkpoint) -> None:
    """Refuse a component checkpoint whose version differs from the one `owner` was trained with."""
    expected = owner.components[name]
    if found.model != expected["model"] or found.version != expected["version"]:
        raise ModelUnavailableError(
            f"{owner.path}: this {owner.model} checkpoint was trained with {expected['model']} version "
            f"{expected['version']}, but {found.path} is {found.model} version {found.version}; "
            "retrain it on the current component or restore the component it was trained with"
        )


def _listed_files(folder: Path) -> dict[str, str]:
    """Every file under `folder` except the manifest and card, and except nested checkpoints."""
    files: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or rel.as_posix() in (MANIFEST, CARD) or path.name.endswith(".tmp"):
            continue
        if any((folder / parent / MANIFEST).is_file() for parent in rel.parents if parent != Path(".")):
            continue
        files[rel.as_posix()] = sha256_of(path)
    return files


def write_checkpoint(
    folder: str | os.PathLike,
    *,
    model: str,
    config: Mapping[str, Any],
    labels: Sequence[str],
    components: Mapping[str, Mapping[str, Any]] | None = None,
    data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    card: str | None = None,
    created_at: str | None = None,
) -> Checkpoint:
    """Write `manifest.json` (and the model card) for the weight files already in `folder`.

    The manifest is written last and atomically, so a folder without one is an unfinished write."""
    folder = Path(folder)
    components = {name: dict(c) for name, c in (components or {}).items()}
    for name, component in components.items():
        if component.get("kind") not in COMPONENT_KINDS:
            raise ValueError(f"component {name!r} needs a kind among {COMPONENT_KINDS}, got {component!r}")
    manifest = {
        "format": FORMAT,
        "model": model,
        "config": json.loads(json.dumps(config)),
        "labels": list(labels),
        "files": _listed_files(folder),
        "components": components,
        "created_at": created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        "data": dict(data or {}),
        "metrics": dict(metrics or {}),
    }
    if card is not None:
        _write_atomic(folder / CARD, card)
    _write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return Checkpoint(folder, manifest)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def update_metrics(checkpoint: Checkpoint, metrics: Mapping[str, Any], card: str | None = None) -> Checkpoint:
    """Record more metrics (e.g. a test evaluation) in a checkpoint; its version does not change."""
    manifest = {**checkpoint.manifest, "metrics": {**checkpoint.metrics, **metrics}}
    if card is not None:
        _write_atomic(checkpoint.path / CARD, card)
    _write_atomic(checkpoint.path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return Checkpoint(checkpoint.path, manifest)


def read_checkpoint(folder: str | os.PathLike, *, verify: bool = True) -> Checkpoint:
    """A checkpoint folder's manifest; with `verify`, every listed file must exist with its sha256."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ModelUnavailableError(
            f"{folder} is not a checkpoint (no {MANIFEST}); train one with `python -m training train ...` "
            "or pick a version from `python -m training versions`"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"{manifest_path} cannot be read ({exc}); the checkpoint is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelUnavailableError(f"{manifest_path} is not an {FORMAT} manifest; retrain or convert the checkpoint")
    bad = first_bad_file(folder, manifest["files"]) if verify else None
    if bad is not None and bad[1] == "missing":
        raise ModelUnavailableError(f"{folder}: the {manifest['model']} checkpoint lacks {bad[0].name}")
    if bad is not None:
        raise ModelUnavailableError(
            f"{bad[0]} does not match the sha256 in its manifest: the file was changed or damaged; "
            "restore it (git checkout / retrain) rather than editing weights in place"
        )
    return Checkpoint(folder, manifest)
