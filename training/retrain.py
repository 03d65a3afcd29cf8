"""`python -m training retrain {mister-e,farcer} --report FILE TRAIN-ARGS...`: what the app's
"Retrain from corrections" runs, in a process of its own.

It trains a candidate with the task's `train` (TRAIN-ARGS as `python -m training train TASK` takes them,
`--corrections` included; the result is a new version in the model store), then evaluates the candidate
and the active version side by side on the held-out corrections and on the corpus's validation split
and writes FILE (JSON): {model, version, active_version, comparison: {view: {candidate, active}}}.
Each version is evaluated as it was trained: MiSTER-E on its encoders' embeddings; FARCER with its own
few-shot prompt, past-label setting and face encoder. A head that reads faces is judged on the corpus's
validation views that do not leak the label, pooled, when the run had --faces (text only, a neutral face
on every turn, a face of a random emotion: `training.farcer.validation_views`), else text only; corrected
turns keep their own face crops.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.errors import InputError, ModelUnavailableError
from backend.model_store import open_model_store
from backend.settings import get_settings
from training.corrections import load_corrections
from training.outputs import active_checkpoint
from training.tasks import task_module

VIEWS = ("corpus validation", "held-out corrections")


def _say(message: str) -> None:
    print(f"stage: {message}", file=sys.stderr, flush=True)


def _summary(report: dict) -> dict:
    return {k: round(report[k], 4) if isinstance(report[k], float) else report[k] for k in ("weighted_f1", "accuracy", "n")}


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


def compare_farcer(candidate, active, args: argparse.Namespace) -> dict:
    """As `compare_mister_e`, for FARCER heads."""
    from backend.farcer_predictor import load_farcer, trained_with_faces
    from backend.farcer_processor import sample_shots
    from training.corpora.registry import load_corpus, split
    from training.farcer import Split, evaluation_face_encoder, label_split, load_split, own_faces, reports
    from training.farcer import shot_pool, validation_views

    store = open_model_store(get_settings())
    corrections = (load_corrections(args.corrections, candidate.labels, args.seed, args.corrections_weight)
                   if args.corrections else None)
    corpus_train = split(load_corpus(args.corpus, args.data), "train")

    def views(checkpoint) -> dict:
        encoder = evaluation_face_encoder(checkpoint, None, store)
        out = {"corpus validation": load_split(args.corpus, args.data, "validation", args.val_dialogues)}
        if args.faces is not None and trained_with_faces(checkpoint):
            out["corpus validation"] = validation_views(out["corpus validation"].dialogues, args.faces,
                                                        checkpoint.labels, 0, encoder, args.seed)
        if corrections is not None:
            held = corrections.validation
            out["held-out corrections"] = Split(held, own_faces(held, encoder))
        return out

    result: dict[str, dict] = {}
    for role, checkpoint in (("candidate", candidate), ("active", active)):
        try:
            farcer, processor = load_farcer(checkpoint, store, "cpu")
            trained = checkpoint.data["train"]
            shots = sample_shots(shot_pool(corpus_train, trained["seed"]), trained["shots"], args.seed)
            past = "none" if trained["past_labels"] == "none" else "predicted"
            chosen = views(checkpoint)
        except (InputError, ModelUnavailableError) as exc:
            for view in VIEWS:
                result.setdefault(view, {})[role] = {"error": str(exc)}
            continue
        for view in VIEWS:
            data = chosen.get(view)
            if data is None or not data.dialogues:
                result.setdefault(view, {})[role] = {"error": "nothing held out (too few corrected dialogues)"}
                continue
            predicted = label_split(farcer, processor, data, shots, past)
            result.setdefault(view, {})[role] = _summary(reports(data, predicted, processor.labels))
    return result


def retrain(model: str, report_path: Path, train_argv: list[str]) -> int:
    task = task_module(model)
    parser = argparse.ArgumentParser(prog=f"python -m training retrain {model}")
    task.add_train_args(parser)
    args = parser.parse_args(train_argv)
    args.action, args.task = "train", model
    if getattr(args, "out", None) is not None:
        raise InputError("retrain adds a version to the model store; drop --out")
    store = open_model_store(get_settings())
    active = active_checkpoint(model, store)
    before = {v.version for v in store.versions(model)}
    _say("training")
    task.train(args)
    new = [v for v in store.versions(model) if v.version not in before]
    if not new:
        raise InputError("the run wrote a checkpoint identical to an existing version; nothing new to compare")
    candidate = store.find(model, new[-1].version)
    _say("comparing with the active version")
    comparison = (compare_mister_e if model == "mister-e" else compare_farcer)(candidate, active, args)
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
