"""MiSTER-E's offline speech encoder on its own: train it, and evaluate it clean and degraded.

    python -m training train speech-encoder --corpus ravdess --data ../shared/data/ravdess --out runs/speech
    python -m training evaluate speech-encoder --checkpoint checkpoints/mister-e/speech \
        --corpus ravdess --data ../shared/data/ravdess --split test --out runs/speech-test.json --record

The encoder is a head over pooled Whisper base states (backend.speech_encoder) normalised per
speaker group (training/stage1.py trains it; `train mister-e --stage 1` does the same inside a
MiSTER-E folder). Evaluation reads the split's clips clean and through each fixed degradation of
training/speech_augment.TEST_CONDITIONS (AAC in MP4, -20 dB, 8 kHz band + noise, all three) and
reports each one's unweighted recall and its drop from clean, speech only.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from backend.checkpoints import CARD, Checkpoint, update_metrics
from backend.encoders import SPEECH_ENCODER, load_speech_encoder
from backend.errors import InputError
from backend.packaged import PACKAGED
from backend.speech_encoder import WHISPER_BASE
from training.corpora.registry import corpus_labels, load_corpus, split
from training.metrics import classification_report, unweighted_average_recall
from training.mister_e import command_line
from training.outputs import find_checkpoint, reproducible
from training.speech_augment import TEST_CONDITIONS
from training.stage1 import embedding_cache_root, feature_class_ids, train_speech_encoder
from training.whisper_features import condition_features

CORPORA = ("ravdess", "iemocap")
LICENCES = {
    "ravdess": "RAVDESS (Livingstone & Russo 2018): CC BY-NC-SA 4.0, so this encoder is non-commercial",
    "iemocap": "IEMOCAP: USC SAIL release licence (research use, no redistribution)",
}


def _conditions_arg(text: str) -> tuple[str, ...]:
    chosen = tuple(c.strip() for c in text.split(",") if c.strip())
    bad = [c for c in chosen if c not in TEST_CONDITIONS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown conditions {bad}; choose among {', '.join(TEST_CONDITIONS)}")
    return chosen


# ----------------------------------------------------------------------------- train


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", choices=CORPORA, default="ravdess")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="a new checkpoint folder (default: the model store)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--shrink", type=float, default=8.0,
                        help="weight (in clips) of the training statistics in each speaker group's normalisation; "
                        "0 normalises with the training statistics only")
    parser.add_argument("--augmented-copies", type=int, default=1)
    parser.add_argument("--val-conditions", type=_conditions_arg, default=tuple(TEST_CONDITIONS),
                        help="degradations of the validation clips that take part in choosing the epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None)


def train(args: argparse.Namespace) -> int:
    dialogues = load_corpus(args.corpus, args.data)
    checkpoint = train_speech_encoder(
        split(dialogues, "train"), split(dialogues, "validation"), corpus_labels(args.corpus),
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, hidden_dim=args.hidden_dim,
        embed_dim=args.embed_dim, seed=args.seed, out_dir=args.out, shrink=args.shrink or None,
        augmented_copies=args.augmented_copies, val_conditions=args.val_conditions,
        cache_root=args.cache, command=command_line("python -m training train speech-encoder", args, skip=("cache",)),
    )
    write_card(checkpoint, args.corpus)
    print(f"best epoch {checkpoint.metrics['best_epoch']}: validation UAR {checkpoint.metrics['val_uar']}; "
          f"version {checkpoint.version} in {checkpoint.path}")
    return 0


# ----------------------------------------------------------------------------- evaluate


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a speech-encoder folder or model-store version")
    parser.add_argument("--corpus", choices=CORPORA, default="ravdess")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", choices=["train", "validation", "test"], default="test")
    parser.add_argument("--conditions", type=_conditions_arg, default=tuple(TEST_CONDITIONS))
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument("--record", action="store_true", help="also add the result to the checkpoint's card")


def evaluate_conditions(
    checkpoint: Checkpoint, dialogues: list, conditions: tuple[str, ...], cache_root: Path | None = None
) -> dict[str, dict]:
    """Speech-only `classification_report` (+ "uar") of the encoder's head on the clips, clean and
    through each condition; the same pseudo-dialogues (packing and speaker groups) in every one."""
    if not dialogues:
        raise InputError("the chosen split has no dialogues")
    encoder = load_speech_encoder(checkpoint)
    labels = checkpoint.labels
    reports = {}
    for name in ("clean", *conditions):
        features = condition_features(dialogues, embedding_cache_root(cache_root), name, lambda: encoder.states)
        targets = feature_class_ids(features, dialogues, labels)
        with torch.no_grad():
            logits = encoder.model.head.classify(encoder.embed_features(features.vectors, features.groups))
        keep = targets >= 0
        gold = [labels[i] for i in targets[keep]]
        present = sorted(set(gold), key=labels.index)  # recall over the classes the clips have
        report = classification_report(gold, [labels[i] for i in logits.argmax(-1).numpy()[keep]], labels, present=present)
        reports[name] = {**report, "uar": unweighted_average_recall(report)}
    for name in conditions:
        reports[name]["uar_drop"] = reports["clean"]["uar"] - reports[name]["uar"]
    return reports


def evaluate(args: argparse.Namespace) -> int:
    checkpoint = find_checkpoint(args.checkpoint, SPEECH_ENCODER)
    dialogues = split(load_corpus(args.corpus, args.data), args.split)
    reports = evaluate_conditions(checkpoint, dialogues, args.conditions, args.cache)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reports, indent=2) + "\n")
    for name, report in reports.items():
        drop = f", drop {report['uar_drop']:+.4f}" if "uar_drop" in report else ""
        print(f"{args.corpus} {args.split} {name}: UAR {report['uar']:.4f}, weighted F1 {report['weighted_f1']:.4f}, "
              f"n={report['n']}{drop}")
    if args.record:
        command = command_line("python -m training evaluate speech-encoder", args, skip=("cache",))
        summary = {name: {"uar": round(r["uar"], 4), "weighted_f1": round(r["weighted_f1"], 4), "n": r["n"]}
                   for name, r in reports.items()}
        evaluations = {**checkpoint.metrics.get("evaluations", {}), command: summary}
        write_card(update_metrics(checkpoint, {"evaluations": evaluations}), args.corpus)
    return 0


# ----------------------------------------------------------------------------- model card


def write_card(checkpoint: Checkpoint, corpus: str) -> None:
    (checkpoint.path / CARD).write_text(model_card(checkpoint, corpus))


def model_card(checkpoint: Checkpoint, corpus: str) -> str:
    whisper = PACKAGED[WHISPER_BASE]
    parts = " + ".join(PACKAGED[p].package for p in whisper.parts) or whisper.package
    config, metrics = checkpoint.config, checkpoint.metrics
    encoder = config["encoder"]
    files = "\n".join(f"  - `{name}`: sha256 `{digest}`" for name, digest in whisper.files.items())
    evaluations = "\n\n".join(
        f"`{command}`\n\n| condition | UAR | weighted F1 | n |\n|---|---|---|---|\n"
        + "\n".join(f"| {name} | {r['uar']:.4f} | {r['weighted_f1']:.4f} | {r['n']} |" for name, r in result.items())
        for command, result in metrics.get("evaluations", {}).items()
    ) or "Not evaluated yet (see the evaluate command in training/speech_encoder.py)."
    shrink = encoder.get("shrink")
    normalisation = (
        f"within each speaker group (one speaker's turns in one dialogue), with the group's mean and "
        f"variance shrunk toward the training statistics by {shrink:g} pseudo-clips"
        if shrink else "with the training statistics (no per-speaker normalisation)"
    )
    return f"""# Speech encoder: pooled Whisper base states -> per-speaker normalisation -> MLP

Version `{checkpoint.version}`, kind `{config["kind"]}`, features `{config["features"]}`.
Labels: {", ".join(checkpoint.labels)}.

## Pretrained component

- package: `{parts}` version {whisper.version} (joined into one folder by backend.packaged.assembled_path)
- upstream model it claims to be: {whisper.upstream}; licence {whisper.licence}
- weight files (checked at load time):
{files}

The Whisper encoder is frozen and run with CTranslate2 (int8 on CPU). A dialogue's turn clips are
brought to one loudness with a single gain, packed one after another into 30 s windows, encoded
once per window, and the 50-per-second states inside each turn are pooled into [mean ; std]
(1024 values). The vector is normalised {normalisation}, then
Linear({encoder["in_dim"]}->{encoder["hidden_dim"]}) -> ReLU -> Dropout -> Linear(->{encoder["embed_dim"]}) = the
embedding MiSTER-E's stage 2 reads -> ReLU -> Dropout -> Linear(->{encoder["n_labels"]}).

## Data and licence

{LICENCES[corpus]}. Actors 1-18 train, 19-20 validation, 21-24 test (speaker independent); the
eight RAVDESS emotions map to MELD's seven (calm -> neutral). Clips are read with the app's decoder
(backend.media.load_audio). A corpus of single clips is packed as pseudo-dialogues: each actor's
clips shuffled (seeded) into groups of 2-12. Training used the clean clips and
{config["augmented_copies"]} degraded copies (a random channel per pseudo-dialogue: gain -30..+6 dB,
white noise at 5-30 dB SNR, an 8 kHz telephone band, synthetic reverberation with RT60 0.2-0.8 s,
AAC-in-MP4 or MP3 at 24-64 kbit/s, each with its own probability). {checkpoint.data["n_train"]} training rows,
{checkpoint.data["n_val"]} validation rows.

## Training and selection

`{reproducible(checkpoint.data.get("command", "(command not recorded)"))}`

Focal loss (gamma 2), AdamW. The epoch ({metrics["best_epoch"]}) was chosen on the validation actors'
clips, clean and through {", ".join(config["val_conditions"]) or "no degradation"} (validation only,
never test). Validation UAR of the kept epoch: {", ".join(f"{k} {v:.4f}" for k, v in metrics["val_uar"].items())}.

## Test (speech only)

{evaluations}
"""
