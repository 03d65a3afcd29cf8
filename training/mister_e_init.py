"""`train mister-e --init REF`: continue from an existing MiSTER-E version instead of starting over. Its
stage-1 encoders are copied as they are (stage 1 does not run) and stage 2 starts from its weights, so
a retraining on corrections costs one stage-2 run. REF is a checkpoint folder, a version id or built-in
name in the model store, or `active` (the version the app's analyses use)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from backend.checkpoints import Checkpoint
from backend.errors import InputError
from backend.mister_e_predictor import MODEL, build_model, checkpoint_modalities
from backend.model_store import open_model_store
from backend.settings import get_settings
from models.mister_e import MisterE
from training.outputs import find_checkpoint


def add_init_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--init",
        default=None,
        help="continue from this MiSTER-E version (folder, version id, built-in name or `active`): reuse its "
        "stage-1 encoders and start stage 2 from its weights",
    )


def resolve_init(ref: str, labels: tuple[str, ...], modalities: tuple[str, ...], stage: str) -> Checkpoint:
    """The checkpoint `ref` names, checked against the run's labels and modalities."""
    if stage != "both":
        raise InputError("--init replaces stage 1 and starts stage 2 from a version; drop --stage")
    init = find_checkpoint(ref, MODEL)
    if init.labels != labels:
        raise InputError(
            f"--init {ref}: that version predicts {', '.join(init.labels)}, not this run's labels "
            f"({', '.join(labels)}); continue from a version trained on the same labels"
        )
    extra = [m for m in modalities if m not in checkpoint_modalities(init)]
    if extra:
        raise InputError(
            f"--init {ref}: that version reads {', '.join(checkpoint_modalities(init))} but this run has "
            f"{', '.join(modalities)}; give --modalities {','.join(checkpoint_modalities(init))} or train from scratch"
        )
    return init


def init_modalities(init: Checkpoint, modalities: tuple[str, ...]) -> tuple[str, ...]:
    """The modalities a run from `init` has: all of `init`'s (its encoders and stage 2 come as a whole);
    one the data lacks is simply never present in training (a notice says so)."""
    lacking = [m for m in checkpoint_modalities(init) if m not in modalities]
    if lacking:
        print(f"notice: the data has no {' or '.join(lacking)}; stage 2 trains without it (the gate gives it "
              "no weight where it is missing)", file=sys.stderr)
    return tuple(checkpoint_modalities(init))


def copy_encoders(init: Checkpoint, folder: Path) -> None:
    """The stage-1 encoder checkpoints of `init`, copied unchanged into `folder/<modality>`."""
    store = open_model_store(get_settings())
    for modality in checkpoint_modalities(init):
        shutil.copytree(store.component(init, modality).path, folder / modality)


def initial_model(init: Checkpoint) -> MisterE:
    """Stage 2 as `init` left it, to train on."""
    return build_model(init, open_model_store(get_settings()), "cpu").train()
