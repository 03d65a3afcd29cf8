"""Where a training run writes its checkpoint (a new version in the model store, or `--out`), and the
checkpoints a command names (a folder, or a version in the model store)."""
from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backend.checkpoints import MANIFEST, Checkpoint, read_checkpoint
from backend.errors import InputError, ModelUnavailableError
from backend.model_store import ModelStore, NewVersion, open_model_store
from backend.registry import model_spec
from backend.settings import get_settings
from training.distributed import is_main_process


_REPLICAS: list[Path] = []  # the throwaway folders a non-main process is writing into


@contextmanager
def checkpoint_output(out: Path | None, model: str, resume: bool = False) -> Iterator[NewVersion]:
    """Yield the folder a run writes into (it may rewrite its checkpoint there as it improves).

    Without `out` it is a new version of `model` in the model store, stored under its version id
    when the run ends well. An `out` that already holds a checkpoint is refused, so a run never
    overwrites a shipped or earlier checkpoint; with `resume`, only an unfinished one (a manifest whose
    data says `finished: false`) is taken up again.

    Under `accelerate launch` only the main process writes where it is told: the others, which train
    in step with it, write into a throwaway folder (and a checkpoint nested in it, such as MiSTER-E's
    stage-1 encoders, into that folder, where their stage 2 reads it)."""
    if not is_main_process() and not any(root in Path(out or "").resolve().parents for root in _REPLICAS):
        with tempfile.TemporaryDirectory(prefix=f"{model}-replica-") as folder:
            _REPLICAS.append(Path(folder).resolve())
            try:
                pending = NewVersion(Path(folder))
                yield pending
                pending.checkpoint = read_checkpoint(pending.folder) if (pending.folder / MANIFEST).is_file() else None
            finally:
                _REPLICAS.pop()
        return
    if out is None:
        with open_model_store(get_settings()).new_version(model) as pending:
            yield pending
        print(f"saved {model} version {pending.checkpoint.version} in {pending.checkpoint.path}", flush=True)
        return
    if (out / MANIFEST).exists() and not (resume and read_checkpoint(out).data.get("finished") is False):
        raise InputError(
            f"{out} already holds a checkpoint; training never overwrites one. Give a new --out folder, or leave "
            "--out out to add a version to the model store (`python -m training versions` lists them)"
        )
    out.mkdir(parents=True, exist_ok=True)
    pending = NewVersion(out)
    yield pending
    pending.checkpoint = read_checkpoint(out)



def active_checkpoint(model: str, store: ModelStore | None = None) -> Checkpoint:
    """The version of `model` the app's analyses use in the configured profile: the activated one,
    else the profile's built-in checkpoint."""
    settings = get_settings()
    store = store or open_model_store(settings)
    return store.active(model, model_spec(model).checkpoints[settings.profile])


def find_checkpoint(ref: str | Path, *models: str) -> Checkpoint:
    """A checkpoint named on the command line: a folder holding one, else a version (or built-in
    folder name) of one of `models` in the model store, or `active` (see `active_checkpoint`) when
    one model is asked for."""
    if str(ref) == "active" and len(models) == 1:
        return active_checkpoint(models[0])
    path = Path(ref)
    if (path / MANIFEST).is_file():
        checkpoint = read_checkpoint(path)
        if checkpoint.model not in models:
            raise InputError(f"{path} holds a {checkpoint.model} checkpoint; expected {' or '.join(models)}")
        return checkpoint
    store = open_model_store(get_settings())
    for model in models:
        if any(str(ref) in (v.version, v.name) for v in store.versions(model)):
            return store.find(model, str(ref))
    raise ModelUnavailableError(
        f"{ref} is neither a checkpoint folder nor a {' or '.join(models)} version in the model store; "
        "list them with `python -m training versions`"
    )


def reproducible(command: str) -> str:
    """A recorded train command as a model card quotes it: without --out, which would now be refused
    (the folder holds this checkpoint); as it stands it adds a version to the model store."""
    return re.sub(r" --out \S+", "", command)
