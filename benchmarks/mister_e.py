"""MiSTER-E timings: one stage-2 training epoch on MELD train from cached embeddings, and MoE
inference on a 20-turn dialogue (target < 50 ms on CPU with the offline/small preset).

    python -m benchmarks.mister_e [--checkpoint DIR|VERSION] [--meld DIR] [--ravdess DIR] [--threads N]

Prints JSON. Run the training once first so the MELD/RAVDESS embeddings are in the cache; the
benchmark never times their extraction.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from backend.checkpoints import Checkpoint
from backend.mister_e_predictor import build_model, checkpoint_modalities
from backend.model_store import ModelStore, open_model_store
from backend.settings import REPO_ROOT, get_settings
from models.mister_e import MisterE, MisterEConfig
from training.corpora.registry import load_corpus, split
from training.mister_e import Stage2Config, find_checkpoint, make_optimizer, stage2_dialogues, train_one_epoch
from training.pseudo_pairs import SpeechBank, drop_speech
from training.stage1 import extract_embeddings

SHARED = REPO_ROOT.parent / "shared" / "data"


def training_epoch(
    ckpt: Checkpoint,
    store: ModelStore,
    config: MisterEConfig,
    meld: Path,
    ravdess: Path | None,
    cache: Path | None,
) -> dict:
    """Seconds for one stage-2 epoch on MELD train (pseudo-paired with RAVDESS speech when given)."""
    labels = ckpt.labels
    dialogues = split(load_corpus("meld", meld), "train")
    text = extract_embeddings(store.component(ckpt, "text"), dialogues, cache_root=cache)
    items = stage2_dialogues(dialogues, labels, text, None, config.text_dim, config.speech_dim)
    rng = np.random.default_rng(0)
    cfg = Stage2Config(epochs=1)
    if ravdess is not None and "speech" in checkpoint_modalities(ckpt):
        clips = split(load_corpus("ravdess", ravdess), "train")
        speech = extract_embeddings(store.component(ckpt, "speech"), clips, cache_root=cache)
        clip_items = stage2_dialogues(clips, labels, None, speech, config.text_dim, config.speech_dim)
        bank = SpeechBank(clip_items)
        items = [
            drop_speech(bank.pair(d, rng), cfg.speech_drop_turn, cfg.speech_drop_dialogue, rng) for d in items
        ] + clip_items
    torch.manual_seed(0)
    model = MisterE(config)
    optimizer = make_optimizer(model, cfg)
    started = time.perf_counter()
    train_one_epoch(model, optimizer, items, cfg, rng)
    return {
        "stage2_epoch_s": round(time.perf_counter() - started, 2),
        "train_dialogues": len(items),
        "train_turns": int(sum(len(d) for d in items)),
        "batch_size": cfg.batch_size,
    }


@torch.no_grad()
def inference(model: MisterE, turns: int = 20, repeats: int = 30) -> dict:
    """Median and p90 milliseconds of one forward pass over a `turns`-turn dialogue (eval mode)."""
    config = model.config
    model.eval()
    gen = torch.Generator().manual_seed(0)
    x = {
        "speech": torch.randn(1, turns, config.speech_dim, generator=gen),
        "text": torch.randn(1, turns, config.text_dim, generator=gen),
        "mask": torch.ones(1, turns, dtype=torch.bool),
    }
    for _ in range(3):
        model(**x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(**x)
        times.append((time.perf_counter() - started) * 1000)
    return {
        "moe_inference_ms_median": round(statistics.median(times), 2),
        "moe_inference_ms_p90": round(sorted(times)[int(0.9 * len(times))], 2),
        "turns": turns,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mister_e", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--checkpoint", default=None, help="a folder or a model-store version (default: the active version)"
    )
    parser.add_argument("--meld", type=Path, default=SHARED / "meld")
    parser.add_argument("--ravdess", type=Path, default=SHARED / "ravdess")
    parser.add_argument(
        "--cache", type=Path, default=None, help="embedding cache (default in the ERC cache dir)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    store = open_model_store(get_settings())
    ckpt = find_checkpoint(store, args.checkpoint)
    model = build_model(ckpt, store, "cpu")
    result = {
        "checkpoint": str(ckpt.path),
        "version": ckpt.version,
        "threads": args.threads,
        "parameters": sum(p.numel() for p in model.parameters()),
        **inference(model),
    }
    if args.meld.is_dir():
        ravdess = args.ravdess if args.ravdess.is_dir() else None
        result.update(training_epoch(ckpt, store, model.config, args.meld, ravdess, args.cache))
    else:
        result["stage2_epoch_s"] = None
        result["note"] = f"MELD not found at {args.meld}; pass --meld DIR to time a training epoch"
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
