"""How a checkpoint names a Hugging Face model it was trained on (the paper profile's backbones), and
the check that serving has that very model.

A hub id is recorded with the revision (commit) the local cache holds, and loaded at that revision.
A local folder is recorded by its absolute path and the sha256 of every file in it, so a folder whose
weights or tokenizer changed since training is refused instead of silently reading other inputs.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

from backend.checkpoints import Checkpoint, sha256_of
from backend.errors import ModelUnavailableError


@cache
def _file_hash(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a file, computed once per process while its size and modification time stay the same
    (a 7B folder is ~15 GB: the app's models and the analysis queue load it more than once)."""
    return sha256_of(path)


def _folder_files(folder: Path) -> dict[str, str]:
    files = (p for p in sorted(folder.rglob("*")) if p.is_file())
    return {
        p.relative_to(folder).as_posix(): _file_hash(p, (st := p.stat()).st_size, st.st_mtime_ns)
        for p in files
        if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def cached_revision(name: str) -> str | None:
    """The commit of hub model `name` in the local Hugging Face cache (None when it is not cached)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "config.json")
    if not isinstance(found, str):
        return None
    return Path(found).parent.name  # .../snapshots/<commit>/config.json


def hub_component(name: str) -> dict:
    """The component that names `name`: a local model folder (path + file hashes) or a hub id (+ revision)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        folder = folder.resolve()
        return {"kind": "hub", "name": str(folder), "files": _folder_files(folder)}
    revision = cached_revision(name)
    return {"kind": "hub", "name": name, **({"revision": revision} if revision else {})}


def check_hub_component(owner: Checkpoint, key: str) -> dict:
    """`owner`'s hub component `key`, after checking this machine has exactly that model; else a
    ModelUnavailableError saying what differs and what to do."""
    recorded = owner.components.get(key) or {}
    if recorded.get("kind") != "hub":
        raise ModelUnavailableError(f"{owner.path}: the {owner.model} checkpoint names no Hugging Face model {key!r}")
    name = recorded["name"]
    if "files" in recorded:
        folder = Path(name)
        if not folder.is_dir():
            raise ModelUnavailableError(
                f"{owner.path}: this {owner.model} was trained on the model folder {name} ({key}), which is not "
                "on this machine; restore that folder or retrain on the model you have"
            )
        found = _folder_files(folder)
        changed = sorted(set(found) ^ set(recorded["files"]) | {
            f for f in found.keys() & recorded["files"].keys() if found[f] != recorded["files"][f]})
        if changed:
            raise ModelUnavailableError(
                f"{owner.path}: the model folder {name} ({key}) is not the one this {owner.model} was trained on "
                f"({', '.join(changed[:3])} differ); restore the original backbone or retrain on this one"
            )
    elif "revision" in recorded and cached_revision(name) != recorded["revision"]:
        raise ModelUnavailableError(
            f"{owner.path}: this {owner.model} was trained on {name} at revision {recorded['revision']} ({key}), "
            f"but the local cache holds {cached_revision(name) or 'no copy'}; "
            f"run `hf download {name} --revision {recorded['revision']}` or retrain on the cached revision"
        )
    return recorded


def load_kwargs(component: dict) -> dict:
    """`from_pretrained` keyword arguments that load exactly the recorded revision of a hub id."""
    return {"revision": component["revision"]} if "revision" in component else {}
