"""`python -m training {train,evaluate} TASK ...` — one entry point for every trainable model.

Each task module exposes `add_train_args`, `train`, `add_evaluate_args` and `evaluate`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = {
    "mister-e": "training.mister_e",
    "farcer": "training.farcer",
    "face-encoder": "training.face_encoder",
}


def _task_module(task: str):
    try:
        return importlib.import_module(TASKS[task])
    except ModuleNotFoundError as exc:
        if exc.name == TASKS[task]:
            sys.exit(f"training task {task!r} is not built yet")
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True)
    argv = sys.argv[1:] if argv is None else argv
    for action in ("train", "evaluate"):
        tasks = actions.add_parser(action).add_subparsers(dest="task", required=True)
        for task in TASKS:
            sub = tasks.add_parser(task)
            if len(argv) >= 2 and argv[0] == action and argv[1] == task:
                getattr(_task_module(task), f"add_{action}_args")(sub)
    args = parser.parse_args(argv)
    return getattr(_task_module(args.task), args.action)(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
