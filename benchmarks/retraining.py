"""Retraining MiSTER-E from corrections: how long it takes, and whether the corrections move the model
on held-out dialogues of their domain.

    python -m benchmarks.retraining [--meld DIR] [--turns 200] [--epochs 3] [--weight 3] [--init mister-e]
    python -m benchmarks.retraining --model farcer [--max-steps 10] [--init farcer]

A simulated annotator corrects whole dialogues of MELD's test split (its labels are the gold ones) until
`--turns` turns are corrected; the other test dialogues are held out. The benchmark scores `--init` (the
shipped version by default) on them, runs `train mister-e --corpus meld --init INIT --corrections CSV`
(stage 2 only: the stage-1 encoders are reused) and scores the result on the same held-out dialogues.
Prints JSON: the wall time of the training command (embeddings extracted on the way, unless cached), its
stage-2 minutes, and held-out weighted F1 before and after. MELD's test split is the domain the corpus
already covers, so this measures what 200 more labelled turns of that domain do, not an unseen domain.

`--model farcer` times what the app's FARCER retraining runs: `train farcer --variant lora --init INIT
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
from training.mister_e import evaluate_dialogues, find_checkpoint

SHARED = REPO_ROOT.parent / "shared" / "data"


def simulated_corrections(meld: Path, turns: int, seed: int):
    """(corrected dialogues with at least `turns` turns, held-out dialogues) from MELD's test split."""
    test = split(load_corpus("meld", meld), "test")
    order = np.random.default_rng(seed).permutation(len(test))
    corrected, count = [], 0
    for i in order:
        if count >= turns:
            break
        corrected.append(test[i])
        count += len(test[i])
    chosen = {d.id for d in corrected}
    return corrected, [d for d in test if d.id not in chosen]


def retrain_farcer(args: argparse.Namespace) -> dict:
    """Wall time and recorded validation of a step-budgeted FARCER head retrained from `args.init`."""
    from training.outputs import find_checkpoint as find_version

    init = find_version(args.init, "farcer")
    corrected, _ = simulated_corrections(args.meld, args.turns, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_corpus_csv(Path(tmp) / "corrections.csv", corrected)
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            training(["train", "farcer", "--corpus", "meld", "--data", str(args.meld), "--core",
                      init.components["core"].get("name") or "smollm2", "--variant", "lora", "--init", args.init,
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
    corrected, held_out = simulated_corrections(args.meld, args.turns, args.seed)
    held_out = held_out[: args.held_out] if args.held_out else held_out
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_corpus_csv(Path(tmp) / "corrections.csv", corrected)
        before = evaluate_dialogues(init, store, "meld", held_out, cache_root=args.cache)
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON report only
            training(["train", "mister-e", "--corpus", "meld", "--data", str(args.meld), "--init", args.init,
                      "--corrections", str(csv), "--corrections-weight", str(args.weight), "--epochs",
                      str(args.epochs), "--seed", str(args.seed), "--out", str(Path(tmp) / "retrained"),
                      *(["--cache", str(args.cache)] if args.cache else [])])
        seconds = time.perf_counter() - started
        retrained = find_checkpoint(store, str(Path(tmp) / "retrained"))
        after = evaluate_dialogues(retrained, store, "meld", held_out, cache_root=args.cache)
    print(json.dumps({
        "init": init.version,
        "corrected": {"dialogues": len(corrected), "turns": sum(len(d) for d in corrected)},
        "held_out": {"dialogues": len(held_out), "turns": before["n"]},
        "train_command_seconds": round(seconds, 1),
        "stage2_minutes": retrained.metrics["train_minutes"],
        "epochs": args.epochs,
        "threads": args.threads,
        "weight": args.weight,
        "held_out_weighted_f1": {"before": round(before["weighted_f1"], 4), "after": round(after["weighted_f1"], 4)},
        "validation": {name: round(r["weighted_f1"], 4) for name, r in retrained.metrics["val"].items()},
    }, indent=2))


if __name__ == "__main__":
    main()
