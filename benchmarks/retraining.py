"""Retraining MiSTER-E from corrections: how long it takes, and whether the corrections move the model
on held-out dialogues of their domain.

    python -m benchmarks.retraining [--meld DIR] [--turns 200] [--epochs 3] [--weight 3] [--init mister-e]
    python -m benchmarks.retraining --domain ravdess-aligned --init FOLDER-OR-VERSION
    python -m benchmarks.retraining --model farcer [--max-steps 10] [--init farcer]

A simulated annotator corrects whole dialogues of the domain (its labels are the gold ones) until
`--turns` turns are corrected; the domain's held-out dialogues are scored by `--init` (the shipped
version by default), the benchmark runs `train mister-e --corpus meld --init INIT --corrections CSV`
(stage 2 only: the stage-1 encoders are reused) and scores the result on the same held-out dialogues.
Prints JSON: the wall time of the training command (embeddings extracted on the way, unless cached), its
stage-2 minutes, and held-out weighted F1 before and after. Domains (`--domain`):
- `meld-test`: MELD's test split (held out: the test dialogues not corrected). The corpus already covers
  this domain, so it measures what 200 more labelled turns of it do.
- `ravdess-aligned`: RAVDESS clips read with their own sentences, words that carry no emotion, so only
  the voice tells it (corrected: clips of the training actors 1-18; held out: the test actors 21-24, read
  with text and speech). A MiSTER-E whose stage 2 never read such turns (e.g. one trained on MELD with
  pseudo-paired clips only) has not seen this domain; the shipped one was trained with it.

`--model farcer` times what the app's FARCER retraining runs: `train farcer --init INIT
--corrections CSV --max-steps N --lr 1e-4` (a step budget; validation on 20 corpus dialogues and the
held-out corrections), and prints the validation the run recorded beside the one of INIT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from backend.model_store import open_model_store
from backend.settings import REPO_ROOT, get_settings
from training.__main__ import main as training
from training.corpora.generic_csv import write_corpus_csv
from training.corpora.registry import load_corpus, split
from training.metrics import unweighted_average_recall
from training.mister_e import evaluate_dialogues, find_checkpoint

SHARED = REPO_ROOT.parent / "shared" / "data"


DOMAINS = ("meld-test", "ravdess-aligned")


def simulated_corrections(data: Path, turns: int, seed: int, domain: str = "meld-test"):
    """(corrected dialogues with at least `turns` turns, held-out dialogues) of `domain` (DOMAINS) from
    the corpus at `data`: MELD's test split, or RAVDESS's training actors (held out: its test actors)."""
    corpus = "meld" if domain == "meld-test" else "ravdess"
    loaded = load_corpus(corpus, data)
    pool = split(loaded, "test" if domain == "meld-test" else "train")
    order = np.random.default_rng(seed).permutation(len(pool))
    corrected, count = [], 0
    for i in order:
        if count >= turns:
            break
        corrected.append(pool[i])
        count += len(pool[i])
    if domain != "meld-test":
        return corrected, split(loaded, "test")
    chosen = {d.id for d in corrected}
    return corrected, [d for d in pool if d.id not in chosen]


def retrain_farcer(args: argparse.Namespace) -> dict:
    """Wall time and recorded validation of a step-budgeted FARCER head retrained from `args.init`."""
    from training.outputs import find_checkpoint as find_version

    init = find_version(args.init, "farcer")
    corrected, _ = simulated_corrections(args.meld, args.turns, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_corpus_csv(Path(tmp) / "corrections.csv", corrected)
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            # the head's core, variant and LoRA settings follow --init
            training(["train", "farcer", "--corpus", "meld", "--data", str(args.meld), "--init", args.init,
                      "--shots", "0", "--corrections", str(csv), "--corrections-weight", str(args.weight),
                      "--max-steps", str(args.max_steps), "--val-every", str(args.max_steps), "--val-dialogues", "20",
                      "--batch-size", "4", "--max-turns", "12", "--bf16", "--threads", str(args.threads), "--lr", str(args.lr),
                      "--seed", str(args.seed), "--out", str(Path(tmp) / "retrained")])
        seconds = time.perf_counter() - started
        retrained = find_version(Path(tmp) / "retrained", "farcer")
    val = retrained.metrics["val"]
    return {
        "model": "farcer",
        "init": init.version,
        "corrected": {"dialogues": len(corrected), "turns": sum(len(d) for d in corrected)},
        "train_command_seconds": round(seconds, 1),
        "max_steps": args.max_steps,
        "threads": args.threads,
        "weight": args.weight,
        "lr": args.lr,
        "validation": {name: round(r["weighted_f1"], 4) for name, r in (val.get("views") or {"all": val}).items()},
        "init_validation_weighted_f1": round(init.metrics["val"]["weighted_f1"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--meld", type=Path, default=SHARED / "meld")
    parser.add_argument("--domain", choices=DOMAINS, default="meld-test",
                        help="where the simulated annotator's corrections and the held-out dialogues come from")
    parser.add_argument("--ravdess", type=Path, default=SHARED / "ravdess")
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--weight", type=float, default=3.0)
    parser.add_argument("--model", choices=("mister-e", "farcer"), default="mister-e")
    parser.add_argument("--init", default=None, help="the version retrained (default: the shipped one)")
    parser.add_argument("--max-steps", type=int, default=10, help="farcer: the step budget")
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="farcer: learning rate (a trained head continues gently; 1e-3 for 10 steps undid it)")
    parser.add_argument("--held-out", type=int, default=60, help="held-out dialogues scored (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (on 2 busy cores, 2 threads made an epoch 8x slower than 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.init = args.init or args.model
    if args.model == "farcer":
        print(json.dumps(retrain_farcer(args), indent=2))
        return

    store = open_model_store(get_settings())
    init = find_checkpoint(store, args.init)
    source = args.meld if args.domain == "meld-test" else args.ravdess
    corrected, held_out = simulated_corrections(source, args.turns, args.seed, args.domain)
    held_out = held_out[: args.held_out] if args.held_out else held_out
    # RAVDESS's words are read only when asked for by name (they carry no emotion)
    corpus, modalities = ("meld", None) if args.domain == "meld-test" else ("ravdess", ("text", "speech"))

    def score(checkpoint) -> dict:
        return evaluate_dialogues(checkpoint, store, corpus, held_out, modalities, cache_root=args.cache)

    with tempfile.TemporaryDirectory() as tmp:
        csv = write_corpus_csv(Path(tmp) / "corrections.csv", corrected)
        before = score(init)
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON report only
            training(["train", "mister-e", "--corpus", "meld", "--data", str(args.meld), "--init", args.init,
                      "--corrections", str(csv), "--corrections-weight", str(args.weight), "--epochs",
                      str(args.epochs), "--seed", str(args.seed), "--out", str(Path(tmp) / "retrained"),
                      *(["--cache", str(args.cache)] if args.cache else [])])
        seconds = time.perf_counter() - started
        retrained = find_checkpoint(store, str(Path(tmp) / "retrained"))
        after = score(retrained)
    print(json.dumps({
        "domain": args.domain,
        "init": init.version,
        "corrected": {"dialogues": len(corrected), "turns": sum(len(d) for d in corrected)},
        "held_out": {"dialogues": len(held_out), "turns": before["n"]},
        "train_command_seconds": round(seconds, 1),
        "stage2_minutes": retrained.metrics["train_minutes"],
        "epochs": args.epochs,
        "threads": args.threads,
        "weight": args.weight,
        "held_out_weighted_f1": {"before": round(before["weighted_f1"], 4), "after": round(after["weighted_f1"], 4)},
        "held_out_uar": {"before": round(unweighted_average_recall(before), 4),
                         "after": round(unweighted_average_recall(after), 4)},
        "validation": {name: round(r["weighted_f1"], 4) for name, r in retrained.metrics["val"].items()},
    }, indent=2))


if __name__ == "__main__":
    main()
