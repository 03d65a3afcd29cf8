"""`python -m training {train,evaluate} TASK ...` — one entry point for every trainable model;
`python -m training versions [--model NAME]` lists the model store's versions;
`python -m training retrain TASK --report FILE TRAIN-ARGS...` trains on corrections and compares the
candidate with the active version (training/retrain.py; the app's retraining job runs it).

Each task module exposes `add_train_args`, `train`, `add_evaluate_args` and `evaluate`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from training.tasks import TASKS, task_module

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def versions(model: str | None = None, as_json: bool = False) -> int:
    """Print every version (built-in and trained) with creation time, data and validation metrics."""
    from backend.model_versions import version_rows
    from backend.settings import get_settings

    rows = version_rows(get_settings(), model)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no versions of {model}" if model else "no versions")
        return 0
    for row in rows:
        flags = ", ".join(f for f, on in (("built-in", row["builtin"]), ("active", row["active"])) if on)
        val = " ".join(f"{k}={v}" for k, v in row["metrics"].items()) or "-"
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
    if argv[:1] == ["retrain"]:
        from training.retrain import main as retrain

        return retrain(argv[1:])
    for action in ("train", "evaluate"):
        tasks = actions.add_parser(action).add_subparsers(dest="task", required=True)
        for task in TASKS:
            sub = tasks.add_parser(task)
            if len(argv) >= 2 and argv[0] == action and argv[1] == task:
                getattr(task_module(task), f"add_{action}_args")(sub)
    args = parser.parse_args(argv)
    if args.action == "versions":
        return versions(args.model, args.json)
    run = getattr(task_module(args.task), args.action)
    if args.action != "train":
        return run(args) or 0
    from backend.processes import leave_process_group, process_state

    process_state()  # joins an `accelerate launch` run before any model is loaded
    status = run(args) or 0
    leave_process_group()
    return status


def cli(argv: list[str] | None = None) -> int:
    """`main` for the command line: a user error (bad data, options or checkpoints; a missing model)
    prints `error: <message>` and exits with 2, as argparse does for bad options, without a traceback.
    `main` itself raises them, for callers that handle them."""
    from backend.errors import InputError, ModelUnavailableError

    try:
        return main(argv)
    except (InputError, ModelUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(cli())
