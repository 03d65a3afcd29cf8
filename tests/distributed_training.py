"""MiSTER-E stage 2 and a FARCER LoRA head on small synthetic data, run by tests/test_distributed.py
in one process and under `accelerate launch --multi_gpu --num_processes 2 -m tests.distributed_training OUT`
(CPU processes without CUDA); the main process saves the loss histories and the final weights to OUT,
and every process records how much of each batch it ran through the model."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from backend.dialogue import Dialogue
from benchmarks.farcer_incremental import random_farcer, synthetic_dialogue, synthetic_pool
from models.farcer import Farcer, FarcerConfig, apply_lora
from models.mister_e import MisterE, MisterEConfig
from training.farcer import Split, TrainConfig, fit
from backend.processes import leave_process_group
from training.distributed import build_accelerator
from training.mister_e import Stage2Config, fit_stage2
from training.pseudo_pairs import Stage2Dialogue

LABELS = ("neutral", "joy", "anger")
DIMS = {"speech_dim": 6, "text_dim": 5}
# 7 dialogues in batches of 3: the last batch (1 dialogue) leaves the second process only a filler
CFG = Stage2Config(epochs=3, batch_size=3, lr=1e-2, seed=0)


def corpus(n: int, seed: int) -> list[Stage2Dialogue]:
    """Dialogues of 2-6 turns whose embeddings lean towards their label; some turns lack a modality
    or a label, so every masked path of the loss is used."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(rng.integers(2, 7))
        labels = rng.integers(0, len(LABELS), t)
        labels[rng.random(t) < 0.15] = -1
        text = rng.normal(size=(t, DIMS["text_dim"])).astype(np.float32) + labels[:, None]
        speech = rng.normal(size=(t, DIMS["speech_dim"])).astype(np.float32) - labels[:, None]
        text_present, speech_present = rng.random(t) < 0.85, rng.random(t) < 0.7
        text_present[~speech_present] = True
        out.append(Stage2Dialogue(f"d{i}", text * text_present[:, None], text_present,
                                  speech * speech_present[:, None], speech_present, labels))
    return out


def model() -> MisterE:
    # no dropout: each process would draw its own masks, and the runs could not be compared exactly
    torch.manual_seed(CFG.seed)
    return MisterE(replace(MisterEConfig.tiny(len(LABELS), **DIMS), dropout=0.0, attn_dropout=0.0))


def run() -> tuple[dict, MisterE, int]:
    """Train; the result, the model and the real dialogues this process ran through the model."""
    train, val = corpus(7, seed=1), {"main": corpus(4, seed=2)}
    mister_e, seen = model(), [0]
    forward = mister_e.forward

    def counting(speech, text, mask, *rest):
        if mister_e.training:  # training steps only, not validation
            seen[0] += int(mask.any(-1).sum())
        return forward(speech, text, mask, *rest)

    mister_e.forward = counting
    result = fit_stage2(mister_e, lambda rng: train, val, LABELS, CFG, save=lambda: None)
    return result, mister_e, seen[0]


# FARCER: 9 rows (dialogues of 3-7 turns cut at 4) in batches of 4, 4 and 1, two batches per optimiser
# step; past labels and dropped faces are drawn per row
FARCER_CFG = TrainConfig(variant="lora", shots=3, prompts=3, past_labels="mixed", epochs=2, batch_size=4,
                         accumulate=2, lr=1e-2, min_turns=1, max_turns=4, seed=0)


def farcer_split(n: int, seed: int) -> Split:
    dialogues, faces = [], []
    for i in range(n):
        turns, vectors = synthetic_dialogue(3 + i % 5, 8, seed * 100 + i, words=6)
        dialogues.append(Dialogue(f"d{i}", turns, split="train", corpus="synthetic"))
        faces.append([v.numpy() for v in vectors])
    return Split(dialogues, faces)


def run_farcer() -> tuple[dict, Farcer, int]:
    """Train a LoRA head (no dropout) on a tiny random Llama; the result, the model and the rows this
    process packed for training."""
    farcer, processor = random_farcer(FarcerConfig(image_dim=8), seed=0, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(FARCER_CFG.seed)
    apply_lora(farcer, dropout=0.0)
    packed, pack = [0], processor.pack

    def counting(*args):
        packed[0] += 1
        return pack(*args)

    processor.pack = counting
    result = fit(farcer, processor, farcer_split(6, seed=1), farcer_split(2, seed=2), synthetic_pool(8, 8, seed=3),
                 FARCER_CFG, on_best=lambda report, epoch: None)
    return result, farcer, packed[0]


def main(out: Path) -> None:
    result, mister_e, seen = run()
    farcer_result, farcer, packed = run_farcer()
    accelerator = build_accelerator()
    counts = accelerator.gather(torch.tensor([seen, packed])).view(-1, 2).tolist()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(mister_e.state_dict(), out / "weights.pt")
        torch.save(farcer.trainable_state(), out / "farcer.pt")
        (out / "result.json").write_text(json.dumps({
            "losses": [h["train_loss"] for h in result["history"]],
            "best_epoch": result["best_epoch"],
            "farcer_losses": [row["train_label_loss"] for row in farcer_result["curve"]],
            "farcer_best_step": farcer_result["best_step"],
            "processes": accelerator.num_processes,
            "seen_per_process": [c[0] for c in counts],
            "packed_per_process": [c[1] for c in counts],
        }))
    leave_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
