"""`python -m training retrain {mister-e,farcer} --report FILE TRAIN-ARGS...`: what the app's
"Retrain from corrections" runs, in a process of its own.

It trains a candidate with the task's `train` (TRAIN-ARGS as `python -m training train TASK` takes them,
`--corrections` included; the result is a new version in the model store), then evaluates the candidate
and the active version side by side on the held-out corrections and on the corpus's validation split
and writes FILE (JSON): {model, version, active_version, comparison: {view: {candidate, active}}}.
MiSTER-E is evaluated here; for FARCER the comparison holds the candidate's own validation views (an
active FARCER is not re-evaluated: its prompts and faces depend on how it was trained).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.errors import InputError
from backend.model_store import open_model_store
from backend.registry import model_spec
from backend.settings import get_settings
from training.corrections import load_corrections

VIEWS = ("corpus validation", "held-out corrections")


def _say(message: str) -> None:
    print(f"stage: {message}", file=sys.stderr, flush=True)


def _summary(report: dict) -> dict:
    return {k: (round(report[k], 4) if isinstance(report[k], float) else report[k]) for k in ("weighted_f1", "accuracy", "n")}


def compare_mister_e(candidate, active, args: argparse.Namespace) -> dict:
    """{view: {candidate: summary, active: summary or {error}}} on the corpus validation split and the
    held-out corrections (the same seeded split the candidate trained with)."""
    from training.corpora.registry import split
    from training.mister_e import _load, evaluate_dialogues

    store = open_model_store(get_settings())
    views = {"corpus validation": ("csv" if args.corpus == "csv" else args.corpus,
                                   split(_load(args.corpus, args.data, candidate.labels), "validation"))}
    if args.corrections:
        held = load_corrections(args.corrections, candidate.labels, args.seed, args.corrections_weight).validation
        views["held-out corrections"] = ("csv", held)
    out: dict[str, dict] = {}
    for view, (corpus, dialogues) in views.items():
        row = {}
        for role, checkpoint in (("candidate", candidate), ("active", active)):
            if not dialogues:
                row[role] = {"error": "nothing held out (too few corrected dialogues)"}
                continue
            try:
                row[role] = _summary(evaluate_dialogues(checkpoint, store, corpus, dialogues, cache_root=args.cache))
            except InputError as exc:  # e.g. the active version reads other labels
                row[role] = {"error": str(exc)}
        out[view] = row
    return out


def compare_recorded(candidate) -> dict:
    """The candidate's own validation views, as its training recorded them (FARCER)."""
    val = candidate.metrics.get("val", {})
    views = val.get("views") or {"corpus validation": val}
    names = {"corpus": "corpus validation", "corrections": "held-out corrections"}
    return {names.get(view, view): {"candidate": _summary(report), "active": {"error": "not re-evaluated"}}
            for view, report in views.items()}


def retrain(model: str, report_path: Path, train_argv: list[str]) -> int:
    from training.__main__ import _task_module

    task = _task_module(model)
    parser = argparse.ArgumentParser(prog=f"python -m training retrain {model}")
    task.add_train_args(parser)
    args = parser.parse_args(train_argv)
    args.action, args.task = "train", model
    if getattr(args, "out", None) is not None:
        raise InputError("retrain adds a version to the model store; drop --out")
    settings = get_settings()
    store = open_model_store(settings)
    spec = model_spec(model)
    active = store.active(model, spec.checkpoints[settings.profile])
    before = {v.version for v in store.versions(model)}
    _say("training")
    task.train(args)
    new = [v for v in store.versions(model) if v.version not in before]
    if not new:
        raise InputError("the run wrote a checkpoint identical to an existing version; nothing new to compare")
    candidate = store.find(model, new[-1].version)
    _say("comparing with the active version")
    comparison = compare_mister_e(candidate, active, args) if model == "mister-e" else compare_recorded(candidate)
    report = {"model": model, "version": candidate.version, "active_version": active.version,
              "comparison": comparison}
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    _say("done")
    return 0


def main(argv: list[str]) -> int:
    """`retrain TASK --report FILE` and, after them, the arguments of `train TASK`."""
    parser = argparse.ArgumentParser(prog="python -m training retrain", allow_abbrev=False)
    add_args(parser)
    args, train_argv = parser.parse_known_args(argv)
    return retrain(args.task, args.report, train_argv)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=["mister-e", "farcer"])
    parser.add_argument("--report", type=Path, required=True, help="where the comparison JSON goes")
