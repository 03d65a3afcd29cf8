"""Where a training run writes its checkpoint: a new version in the model store, or `--out`."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backend.checkpoints import MANIFEST, read_checkpoint
from backend.errors import InputError
from backend.model_store import NewVersion, open_model_store
from backend.settings import get_settings


@contextmanager
def checkpoint_output(out: Path | None, model: str) -> Iterator[NewVersion]:
    """Yield the folder a run writes into (it may rewrite its checkpoint there as it improves).

    Without `out` it is a new version of `model` in the model store, stored under its version id
    when the run ends well. An `out` that already holds a checkpoint is refused, so a run never
    overwrites a shipped or earlier checkpoint."""
    if out is None:
        with open_model_store(get_settings()).new_version(model) as pending:
            yield pending
        print(f"saved {model} version {pending.checkpoint.version} in {pending.checkpoint.path}", flush=True)
        return
    if (out / MANIFEST).exists():
        raise InputError(
            f"{out} already holds a checkpoint; training never overwrites one. Give a new --out folder, or leave "
            "--out out to add a version to the model store (`python -m training versions` lists them)"
        )
    out.mkdir(parents=True, exist_ok=True)
    pending = NewVersion(out)
    yield pending
    pending.checkpoint = read_checkpoint(out)

