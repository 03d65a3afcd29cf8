"""MiSTER-E stage 1: fine-tune each utterance encoder as a classifier, then cache its embeddings.

Training uses focal loss (gamma 2) and AdamW, keeps the epoch with the best validation weighted F1
(never test), and writes a "text-encoder" / "speech-encoder" checkpoint holding only what trained
(LoRA adapters and head, or the feature MLP); the backbone and the feature code are components.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from backend.checkpoints import Checkpoint, write_checkpoint
from backend.dialogue import Dialogue, Turn
from backend.encoders import (
    MINILM,
    SPEECH_ENCODER,
    TEXT_ENCODER,
    backbone_component,
    embedding_dim,
    load_speech_encoder,
    load_text_backbone,
    load_text_encoder,
    text_inputs,
)
from backend.errors import InputError
from backend.labels import normalize_label
from backend.settings import get_settings
from backend.speech_features import FEATURE_VERSION, feature_components, file_feature_vector
from models.encoders import (
    FeatureEncoderConfig,
    FeatureSpeechEncoder,
    HeadConfig,
    TextUtteranceEncoder,
    apply_lora,
    lora_dict,
    text_lora_spec,
)
from models.losses import focal_loss
from training.embedding_cache import EmbeddingCache, file_key, text_key
from training.metrics import classification_report
from training.outputs import checkpoint_output

FOCAL_GAMMA = 2.0


@dataclass
class DialogueEmbeddings:
    """Per-turn embeddings of one dialogue; rows of absent turns (no audio / empty text) are zero."""

    vectors: np.ndarray  # [T, E] float32
    present: np.ndarray  # [T] bool


def _labelled(dialogues: Sequence[Dialogue], labels: Sequence[str], need_audio: bool) -> tuple[list[Turn], np.ndarray]:
    """Turns that carry a label (and audio when `need_audio`), with their class ids."""
    turns, targets = [], []
    for dialogue in dialogues:
        for i, turn in enumerate(dialogue.turns):
            if turn.label is None or (need_audio and turn.audio is None):
                continue
            label = normalize_label(turn.label, tuple(labels), where=f"dialogue {dialogue.id} turn {i}")
            turns.append(turn)
            targets.append(labels.index(label))
    return turns, np.array(targets, dtype=np.int64)


def _require(turns: list[Turn], split: str, what: str) -> None:
    if not turns:
        raise InputError(f"the {split} dialogues have no labelled turns{what}; stage 1 needs both train and "
                         "validation turns (the best epoch is chosen on validation, never on test)")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _fit(
    model: torch.nn.Module,
    step_inputs: Callable[[np.ndarray], dict],
    targets: np.ndarray,
    predict_val: Callable[[], np.ndarray],
    val_targets: np.ndarray,
    labels: Sequence[str],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    save: Callable[[], None],
    max_steps_per_epoch: int | None,
    desc: str,
) -> dict:
    """Train with focal loss + AdamW; after each epoch score validation and save when it improves."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng = np.random.default_rng(seed)
    y_val = [labels[i] for i in val_targets]
    history, best = [], {"epoch": -1, "weighted_f1": -1.0}
    for epoch in range(epochs):
        model.train()
        started, losses = time.perf_counter(), []
        steps = list(_batches(len(targets), batch_size, rng))[:max_steps_per_epoch]
        bar = tqdm(steps, desc=f"{desc} epoch {epoch + 1}/{epochs}")
        for idx in bar:
            logits = model(**{k: v.to(device) for k, v in step_inputs(idx).items()})
            y = torch.as_tensor(targets[idx], device=device)
            loss = focal_loss(logits.float(), y, FOCAL_GAMMA, mask=torch.ones_like(y, dtype=torch.bool))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        train_seconds = time.perf_counter() - started
        report = classification_report(y_val, [labels[i] for i in predict_val()], labels)
        history.append({
            "epoch": epoch + 1, "train_loss": float(np.mean(losses)), "steps": len(steps),
            "train_seconds": round(train_seconds, 2),
            "val_seconds": round(time.perf_counter() - started - train_seconds, 2),
            "val_weighted_f1": report["weighted_f1"], "val_accuracy": report["accuracy"],
        })
        if report["weighted_f1"] > best["weighted_f1"]:
            best = {"epoch": epoch + 1, "weighted_f1": report["weighted_f1"], "report": report}
            save()
    return {"best_epoch": best["epoch"], "best_val_weighted_f1": best["weighted_f1"],
            "val_report": best["report"], "history": history}


@torch.no_grad()
def _predict(model: torch.nn.Module, inputs: Callable[[np.ndarray], dict], n: int, batch_size: int) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    preds = [model(**{k: v.to(device) for k, v in inputs(idx).items()}).argmax(-1).cpu() for idx in _batches(n, batch_size)]
    return torch.cat(preds).numpy()


def trained_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changed: trainable parameters plus every tensor outside the backbone."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {
        name: t.detach().cpu().contiguous()
        for name, t in model.state_dict().items()
        if name in trainable or not name.startswith("backbone.")
    }


def _save_weights(model: torch.nn.Module, out_dir: Path) -> None:
    """`model.safetensors` of the trained tensors (rewritten at each better epoch, atomically)."""
    tmp = out_dir / "model.safetensors.tmp"
    save_file(trained_state_dict(model), str(tmp))
    os.replace(tmp, out_dir / "model.safetensors")


def _encoder_data(n_train: int, n_val: int, command: str | None) -> dict:
    return {"n_train": n_train, "n_val": n_val, **({"command": command} if command else {})}


def train_text_encoder(
    dialogues_train: Sequence[Dialogue],
    dialogues_val: Sequence[Dialogue],
    labels: Sequence[str],
    backbone: str = MINILM,
    epochs: int = 3,
    lr: float = 3e-4,
    batch_size: int = 32,
    lora: bool = True,
    max_tokens: int = 128,
    seed: int = 0,
    *,
    out_dir: Path | None,
    embed_dim: int = 256,
    device: str | None = None,
    max_steps_per_epoch: int | None = None,
    command: str | None = None,
) -> Checkpoint:
    """Fine-tune `backbone` + attentive-pooling head on transcripts into a "text-encoder" checkpoint
    (in `out_dir`, which must not hold one yet, or a new version in the model store)."""
    labels = list(labels)
    train_turns, y_train = _labelled(dialogues_train, labels, need_audio=False)
    val_turns, y_val = _labelled(dialogues_val, labels, need_audio=False)
    _require(train_turns, "train", "")
    _require(val_turns, "validation", "")
    _seed_everything(seed)
    model_backbone, tokenizer = load_text_backbone(backbone)
    lora_spec = text_lora_spec(model_backbone) if lora else None
    if lora_spec:
        apply_lora(model_backbone, **lora_dict(lora_spec))
    head = HeadConfig(n_labels=len(labels), embed_dim=embed_dim)
    model = TextUtteranceEncoder(model_backbone, head).to(device or get_settings().torch_device())
    config = {"kind": "text", "backbone": backbone, "head": asdict(head),
              "lora": lora_dict(lora_spec) if lora_spec else None, "max_tokens": max_tokens}

    def texts_of(turns: list[Turn]) -> Callable[[np.ndarray], dict]:
        return lambda idx: text_inputs(tokenizer, [turns[i].text for i in idx], max_tokens)

    with checkpoint_output(out_dir, TEXT_ENCODER) as pending:
        started = time.perf_counter()
        metrics = _fit(
            model, texts_of(train_turns), y_train,
            lambda: _predict(model, texts_of(val_turns), len(val_turns), batch_size * 2), y_val,
            labels, epochs, lr, batch_size, seed, lambda: _save_weights(model, pending.folder),
            max_steps_per_epoch, desc="text stage 1",
        )
        metrics.update(seconds=round(time.perf_counter() - started, 1),
                       trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
        write_checkpoint(pending.folder, model=TEXT_ENCODER, config=config, labels=labels,
                         components={"backbone": backbone_component(backbone)},
                         data=_encoder_data(len(train_turns), len(val_turns), command), metrics=metrics)
    return pending.checkpoint


def speech_features(paths: Sequence[Path], cache_root: Path | None = None) -> np.ndarray:
    """eGeMAPS + log-mel feature vectors of audio files, cached by file identity."""
    cache = EmbeddingCache(_cache_root(cache_root), "speech-features", FEATURE_VERSION)
    return cache.encode_cached(
        paths, lambda batch: np.stack([file_feature_vector(p) for p in batch]),
        batch_size=16, key_fn=file_key, desc="speech features",
    )


def _cache_root(cache_root: Path | None) -> Path:
    return Path(cache_root) if cache_root is not None else get_settings().cache_dir / "embeddings"


def train_speech_encoder(
    dialogues_train: Sequence[Dialogue],
    dialogues_val: Sequence[Dialogue],
    labels: Sequence[str],
    epochs: int = 40,
    lr: float = 1e-3,
    batch_size: int = 64,
    hidden_dim: int = 256,
    embed_dim: int = 128,
    seed: int = 0,
    *,
    out_dir: Path | None,
    cache_root: Path | None = None,
    device: str | None = None,
    max_steps_per_epoch: int | None = None,
    command: str | None = None,
) -> Checkpoint:
    """Train the offline speech encoder on feature vectors of the turns' audio files into a
    "speech-encoder" checkpoint (in `out_dir`, which must not hold one yet, or the model store)."""
    labels = list(labels)
    train_turns, y_train = _labelled(dialogues_train, labels, need_audio=True)
    val_turns, y_val = _labelled(dialogues_val, labels, need_audio=True)
    _require(train_turns, "train", " with audio")
    _require(val_turns, "validation", " with audio")
    x_train = torch.from_numpy(speech_features([Path(t.audio) for t in train_turns], cache_root))
    x_val = torch.from_numpy(speech_features([Path(t.audio) for t in val_turns], cache_root))
    _seed_everything(seed)
    config = FeatureEncoderConfig(in_dim=x_train.shape[1], n_labels=len(labels), hidden_dim=hidden_dim, embed_dim=embed_dim)
    model = FeatureSpeechEncoder(config)
    model.set_standardization(x_train.numpy())
    model.to(device or get_settings().torch_device())

    def rows_of(x: torch.Tensor) -> Callable[[np.ndarray], dict]:
        return lambda idx: {"features": x[torch.from_numpy(idx)]}

    with checkpoint_output(out_dir, SPEECH_ENCODER) as pending:
        started = time.perf_counter()
        metrics = _fit(
            model, rows_of(x_train), y_train,
            lambda: _predict(model, rows_of(x_val), len(val_turns), 1024), y_val,
            labels, epochs, lr, batch_size, seed, lambda: _save_weights(model, pending.folder),
            max_steps_per_epoch, desc="speech stage 1",
        )
        metrics.update(seconds=round(time.perf_counter() - started, 1))
        write_checkpoint(pending.folder, model=SPEECH_ENCODER,
                         config={"kind": "speech-features", "features": FEATURE_VERSION, "encoder": asdict(config)},
                         labels=labels, components=feature_components(),
                         data=_encoder_data(len(train_turns), len(val_turns), command), metrics=metrics)
    return pending.checkpoint


@dataclass
class _Embedder:
    usable: Callable[[Turn], bool]
    item: Callable[[Turn], object]
    key_fn: Callable[[object], str]
    encode: Callable[[list], np.ndarray]


def _text_embedder(checkpoint: Checkpoint, device: str) -> _Embedder:
    encoder = load_text_encoder(checkpoint, device)
    return _Embedder(lambda turn: bool(turn.text.strip()), lambda turn: turn.text, text_key,
                     lambda texts: encoder.embed(texts).numpy())


def _speech_embedder(checkpoint: Checkpoint, device: str, cache_root: Path | None) -> _Embedder:
    encoder = load_speech_encoder(checkpoint, device)
    return _Embedder(lambda turn: turn.audio is not None, lambda turn: Path(turn.audio), file_key,
                     lambda paths: encoder.embed(speech_features(paths, cache_root)).numpy())


def extract_embeddings(
    checkpoint: Checkpoint,
    dialogues: Sequence[Dialogue],
    cache_root: Path | None = None,
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, DialogueEmbeddings]:
    """Per-dialogue embeddings from a stage-1 encoder checkpoint, through the embedding cache.

    The cache is keyed by the checkpoint's version, so retraining never serves stale vectors.
    """
    device = device or get_settings().torch_device()
    if checkpoint.model == TEXT_ENCODER:
        embedder = _text_embedder(checkpoint, device)
    else:
        embedder = _speech_embedder(checkpoint, device, cache_root)
    dim = embedding_dim(checkpoint)
    cache = EmbeddingCache(_cache_root(cache_root), checkpoint.model, checkpoint.version)
    turns = [turn for dialogue in dialogues for turn in dialogue.turns if embedder.usable(turn)]
    vectors = cache.encode_cached([embedder.item(t) for t in turns], embedder.encode, batch_size,
                                  key_fn=embedder.key_fn, desc=f"{checkpoint.model} embeddings")
    out, row = {}, 0
    for dialogue in dialogues:
        present = np.array([embedder.usable(t) for t in dialogue.turns], dtype=bool)
        emb = np.zeros((len(dialogue.turns), dim), dtype=np.float32)
        if present.any():
            emb[present] = vectors[row : row + int(present.sum())]
            row += int(present.sum())
        out[dialogue.id] = DialogueEmbeddings(emb, present)
    return out
