"""`python -m training {train,evaluate} TASK ...` — one entry point for every trainable model;
`python -m training versions [--model NAME]` lists the model store's versions.

Each task module exposes `add_train_args`, `train`, `add_evaluate_args` and `evaluate`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = {
    "mister-e": "training.mister_e",
    "farcer": "training.farcer",
    "face-encoder": "training.face_encoder",
    "speech-encoder": "training.speech_encoder",
}


def _task_module(task: str):
    try:
        return importlib.import_module(TASKS[task])
    except ModuleNotFoundError as exc:
        if exc.name == TASKS[task]:
            sys.exit(f"training task {task!r} is not built yet")
        raise


def versions(model: str | None = None, as_json: bool = False) -> int:
    """Print every version (built-in and trained) with creation time, data and validation metrics."""
    from backend.model_store import open_model_store
    from backend.registry import find_spec
    from backend.settings import get_settings

    settings = get_settings()
    store = open_model_store(settings)
    rows = []
    for info in store.versions(model):
        # Served models have an active version: the one activated, else the profile's built-in folder.
        spec = find_spec(info.model)
        active = spec and (store.active_version(info.model) or spec.checkpoints.get(settings.profile))
        rows.append(
            {
                "model": info.model,
                "version": info.version,
                "name": info.name,
                "created_at": info.created_at,
                "builtin": info.builtin,
                "active": bool(active) and active in (info.version, info.name),  # as store.find matches it
                "validation": info.validation,
                "data": {k: v for k, v in info.data.items() if k in ("corpus", "data", "command")},
                "path": str(info.path),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no versions of {model}" if model else "no versions")
        return 0
    for row in rows:
        flags = ", ".join(f for f, on in (("built-in", row["builtin"]), ("active", row["active"])) if on)
        val = " ".join(f"{k}={v}" for k, v in row["validation"].items()) or "-"
        print(f"{row['model']:<15} {row['version']}  {row['name']:<14} {row['created_at'][:19]}  val {val}"
              + (f"  [{flags}]" if flags else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("versions", help="list the model store's versions")
    listing.add_argument("--model", help="only this model (e.g. mister-e, farcer, face-encoder)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    argv = sys.argv[1:] if argv is None else argv
    for action in ("train", "evaluate"):
        tasks = actions.add_parser(action).add_subparsers(dest="task", required=True)
        for task in TASKS:
            sub = tasks.add_parser(task)
            if len(argv) >= 2 and argv[0] == action and argv[1] == task:
                getattr(_task_module(task), f"add_{action}_args")(sub)
    args = parser.parse_args(argv)
    if args.action == "versions":
        return versions(args.model, args.json)
    return getattr(_task_module(args.task), args.action)(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
