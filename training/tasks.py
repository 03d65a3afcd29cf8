"""The trainable models by CLI name, and their task modules (each exposes `add_train_args`, `train`,
`add_evaluate_args` and `evaluate`)."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

TASKS = {
    "mister-e": "training.mister_e",
    "farcer": "training.farcer",
    "face-encoder": "training.face_encoder",
    "speech-encoder": "training.speech_encoder",
}


def task_module(task: str) -> ModuleType:
    try:
        return importlib.import_module(TASKS[task])
    except ModuleNotFoundError as exc:
        if exc.name == TASKS[task]:
            sys.exit(f"training task {task!r} is not built yet")
        raise
