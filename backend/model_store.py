"""The model store: every version of every model, and which one new analyses use.

Built-in versions are the checkpoint folders shipped in `checkpoints/` (read-only). Trained versions
live in `ERC_DATA_DIR/models/<model>/<version>/`, written once under their version id and never
overwritten. `ERC_DATA_DIR/models/<model>/active.json` names the active version; without it the
profile's built-in checkpoint is active.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from backend.checkpoints import MANIFEST, Checkpoint, check_component, read_checkpoint
from backend.errors import InputError, ModelUnavailableError

ACTIVE = "active.json"
_PARTIAL = ".partial-"


@dataclass(frozen=True)
class VersionInfo:
    """One version as `python -m training versions` and the app list it."""

    model: str
    version: str
    created_at: str
    builtin: bool
    name: str  # the built-in folder name, or the version id for a trained version
    path: Path
    data: dict
    metrics: dict

    @property
    def validation(self) -> dict[str, float]:
        """Validation weighted F1 as the checkpoint recorded it: one number, or one per validation view."""
        val = self.metrics.get("val") or self.metrics.get("val_report") or {}
        if "weighted_f1" in val:
            return {"weighted_f1": round(float(val["weighted_f1"]), 4)}
        return {
            f"{view}.weighted_f1": round(float(report["weighted_f1"]), 4)
            for view, report in val.items()
            if isinstance(report, dict) and "weighted_f1" in report
        }


@dataclass
class NewVersion:
    """The folder a new version is written into, and the stored checkpoint once it is complete."""

    folder: Path
    checkpoint: Checkpoint | None = None


class ModelStore:
    def __init__(self, builtin_dir: Path, root: Path):
        self.builtin_dir, self.root = Path(builtin_dir), Path(root)

    def _builtins(self) -> list[Checkpoint]:
        if not self.builtin_dir.is_dir():
            return []
        found = [p for p in sorted(self.builtin_dir.iterdir()) if (p / MANIFEST).is_file()]
        return [read_checkpoint(p, verify=False) for p in found]

    def _trained(self, model: str | None = None) -> list[Checkpoint]:
        models = [self.root / model] if model else sorted(p for p in self.root.glob("*") if p.is_dir())
        return [
            read_checkpoint(p, verify=False)
            for folder in models
            if folder.is_dir()
            for p in sorted(folder.iterdir())
            if (p / MANIFEST).is_file() and not p.name.startswith(_PARTIAL)
        ]

    def versions(self, model: str | None = None) -> list[VersionInfo]:
        """Built-in versions first, then trained ones, oldest first."""
        builtins = [c for c in self._builtins() if model is None or c.model == model]
        trained = sorted(self._trained(model), key=lambda c: c.created_at)
        return [
            VersionInfo(c.model, c.version, c.created_at, c in builtins, c.path.name, c.path, c.data, c.metrics)
            for c in [*builtins, *trained]
        ]

    def find(self, model: str, version: str) -> Checkpoint:
        """The verified checkpoint of `model` at `version` (a version id, or a built-in folder name)."""
        for info in self.versions(model):
            if version in (info.version, info.name):
                return read_checkpoint(info.path)
        raise ModelUnavailableError(
            f"no {model} version {version!r} in {self.builtin_dir} or {self.root / model}; "
            f"list them with `python -m training versions --model {model}`"
        )

    def component(self, owner: Checkpoint, name: str) -> Checkpoint:
        """A checkpoint component of `owner` (nested in its folder or in the store), at the recorded version."""
        component = owner.components.get(name)
        if component is None or component.get("kind") != "checkpoint":
            raise ModelUnavailableError(f"{owner.path}: the {owner.model} checkpoint has no component {name!r}")
        if "path" in component:
            return owner.nested(name)
        found = self.find(component["model"], component["version"])
        check_component(owner, name, found)
        return found

    # ------------------------------------------------------------------ active versions

    def active(self, model: str, default: str) -> Checkpoint:
        """The active version of `model`: the one `activate` chose, else the built-in `default` folder."""
        return self.find(model, self.active_version(model) or default)

    def active_version(self, model: str) -> str | None:
        pointer = self.root / model / ACTIVE
        return json.loads(pointer.read_text())["version"] if pointer.is_file() else None

    def activate(self, model: str, version: str) -> Checkpoint:
        """Make `version` the one new analyses use (it must exist and verify)."""
        checkpoint = self.find(model, version)
        folder = self.root / model
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{ACTIVE}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps({"version": checkpoint.version}) + "\n")
        os.replace(tmp, folder / ACTIVE)
        return checkpoint

    # ------------------------------------------------------------------ writing

    @contextmanager
    def new_version(self, model: str) -> Iterator[NewVersion]:
        """A fresh folder to write one checkpoint into; on success it moves to `<model>/<version>`.

        The version id comes from the manifest, so an identical checkpoint lands on the existing
        folder (kept as it is) and nothing is ever overwritten. On error the folder is removed."""
        folder = self.root / model
        folder.mkdir(parents=True, exist_ok=True)
        pending = NewVersion(folder / f"{_PARTIAL}{uuid.uuid4().hex}")
        pending.folder.mkdir()
        try:
            yield pending
            written = read_checkpoint(pending.folder)
            if written.model != model:
                raise InputError(f"a {written.model} checkpoint was written where a {model} one was expected")
            final = folder / written.version
            if final.exists():
                shutil.rmtree(pending.folder)
            else:
                os.replace(pending.folder, final)
            pending.checkpoint = read_checkpoint(final)
        finally:
            if pending.folder.exists():
                shutil.rmtree(pending.folder)


def open_model_store(settings) -> ModelStore:
    """The store of the given `backend.settings.Settings`."""
    return ModelStore(settings.checkpoints_dir, settings.models_dir)
