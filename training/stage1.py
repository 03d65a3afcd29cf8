"""MiSTER-E stage 1: fine-tune each utterance encoder as a classifier, then cache its embeddings.

Training uses focal loss (gamma 2) and AdamW, keeps the epoch with the best validation weighted F1
(never test), and writes a "text-encoder" / "speech-encoder" checkpoint holding only what trained
(LoRA adapters and head on a text backbone or a Qwen2-Audio tower, or the head over pooled Whisper
states); the backbone, the Whisper weights and the feature code are components.
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
from safetensors.torch import load_file, save_file
from accelerate import PartialState
from tqdm import tqdm

from backend.checkpoints import Checkpoint, write_checkpoint
from backend.dialogue import Dialogue, Turn
from backend.encoders import (
    MINILM,
    SPEECH_ENCODER,
    SPEECH_KIND,
    TEXT_ENCODER,
    TOWER_KIND,
    backbone_component,
    embedding_dim,
    load_audio_tower,
    load_speech_encoder,
    load_text_backbone,
    load_text_encoder,
    speech_components,
    text_inputs,
    tower_inputs,
)
from backend.errors import InputError
from backend.labels import normalize_label
from backend.media import load_audio
from backend.settings import get_settings
from backend.speech_encoder import FEATURE_VERSION
from models.encoders import (
    SPEECH_LORA,
    AudioTowerEncoder,
    FeatureEncoderConfig,
    FeatureSpeechEncoder,
    HeadConfig,
    TextUtteranceEncoder,
    apply_lora,
    lora_dict,
    text_lora_spec,
)
from models.losses import focal_loss
from training.distributed import (
    build_accelerator,
    enable_gradient_checkpointing,
    gather_with_grad,
    local_batch,
    map_shards,
    prepare,
)
from training.embedding_cache import EmbeddingCache, file_key, text_key
from training.metrics import classification_report, unweighted_average_recall
from training.outputs import checkpoint_output
from training.whisper_features import CorpusFeatures, augmented_features, clean_features, condition_features

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
    gradient_checkpointing: bool = False,
    bf16: bool = False,
) -> dict:
    """Train with focal loss + AdamW; after each epoch score validation and save when it improves.

    Under `accelerate launch` each process runs its share of every batch and the focal loss is taken
    over the logits gathered from all of them (training/distributed.py), so the steps are those of one
    process; `save` writes for real in the main process only (training/outputs.py)."""
    accelerator = build_accelerator(bf16=bf16, cpu=next(model.parameters()).device.type == "cpu")
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    trained, optimizer = prepare(
        accelerator, model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr))
    device = accelerator.device
    rng = np.random.default_rng(seed)
    y_val = [labels[i] for i in val_targets]
    history, best = [], {"epoch": -1, "weighted_f1": -1.0}
    for epoch in range(epochs):
        trained.train()
        started, losses = time.perf_counter(), []
        steps = list(_batches(len(targets), batch_size, rng))[:max_steps_per_epoch]
        bar = tqdm(steps, desc=f"{desc} epoch {epoch + 1}/{epochs}", disable=not accelerator.is_main_process)
        for idx in bar:
            # a short share is padded with the batch's first row, left out of the loss by the mask
            share, real = local_batch(idx, accelerator, lambda first: first)
            share = np.asarray(share)
            logits = trained(**{k: v.to(device) for k, v in step_inputs(share).items()})
            y = torch.as_tensor(targets[share], device=device)
            mask = torch.arange(len(share), device=device) < real
            logits, y, mask = (gather_with_grad(t, accelerator) for t in (logits, y, mask))
            loss = focal_loss(logits.float(), y, FOCAL_GAMMA, mask=mask)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
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
    """Predicted class ids of rows 0..n-1; under `accelerate launch` each process predicts its share."""
    model.eval()
    device = next(model.parameters()).device

    def predict(rows: Sequence[int]) -> list[int]:
        out = []
        for start in range(0, len(rows), batch_size):
            batch = inputs(np.asarray(rows[start : start + batch_size]))
            out += model(**{k: v.to(device) for k, v in batch.items()}).argmax(-1).tolist()
        return out

    return np.array(map_shards(predict, range(n), PartialState()), dtype=np.int64)


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
    gradient_checkpointing: bool = False,
    bf16: bool = False,
) -> Checkpoint:
    """Fine-tune `backbone` + attentive-pooling head on transcripts into a "text-encoder" checkpoint
    (in `out_dir`, which must not hold one yet, or a new version in the model store);
    `gradient_checkpointing` trades compute for the activation memory of a large backbone; `bf16`
    autocasts the training forward on a GPU."""
    labels = list(labels)
    train_turns, y_train = _labelled(dialogues_train, labels, need_audio=False)
    val_turns, y_val = _labelled(dialogues_val, labels, need_audio=False)
    _require(train_turns, "train", "")
    _require(val_turns, "validation", "")
    _seed_everything(seed)
    model_backbone, tokenizer = load_text_backbone(backbone)
    component = backbone_component(backbone)  # after loading: a hub model's revision is then in the cache
    backbone = MINILM if backbone == MINILM else component["name"]  # a folder as its absolute path
    lora_spec = text_lora_spec(model_backbone) if lora else None
    if lora_spec:
        apply_lora(model_backbone, **lora_dict(lora_spec))
    head = HeadConfig(n_labels=len(labels), embed_dim=embed_dim)
    model = TextUtteranceEncoder(model_backbone, head).to(device or get_settings().torch_device())
    config = {"kind": "text", "backbone": backbone, "head": asdict(head),
              "lora": lora_dict(lora_spec) if lora_spec else None, "max_tokens": max_tokens}

    def texts_of(turns: list[Turn]) -> Callable[[np.ndarray], dict]:
        return lambda idx: text_inputs(tokenizer, [turns[i].text for i in idx], max_tokens)

    return _fit_encoder(
        model, TEXT_ENCODER, config, component, (texts_of(train_turns), y_train, len(train_turns)),
        (texts_of(val_turns), y_val, len(val_turns)), labels, epochs, lr, batch_size, seed, out_dir,
        max_steps_per_epoch, "text stage 1", command, gradient_checkpointing, bf16,
    )


def _fit_encoder(
    model: torch.nn.Module,
    name: str,
    config: dict,
    component: dict,
    train: tuple[Callable[[np.ndarray], dict], np.ndarray, int],
    val: tuple[Callable[[np.ndarray], dict], np.ndarray, int],
    labels: list[str],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    out_dir: Path | None,
    max_steps_per_epoch: int | None,
    desc: str,
    command: str | None,
    gradient_checkpointing: bool,
    bf16: bool,
) -> Checkpoint:
    """Train a backbone encoder (`_fit`) on (inputs of batch indices, class ids, count) and write its
    `name` checkpoint with the backbone as its component."""
    (train_inputs, y_train, n_train), (val_inputs, y_val, n_val) = train, val
    with checkpoint_output(out_dir, name) as pending:
        started = time.perf_counter()
        metrics = _fit(
            model, train_inputs, y_train, lambda: _predict(model, val_inputs, n_val, batch_size * 2), y_val,
            labels, epochs, lr, batch_size, seed, lambda: _save_weights(model, pending.folder),
            max_steps_per_epoch, desc=desc, gradient_checkpointing=gradient_checkpointing, bf16=bf16,
        )
        metrics.update(seconds=round(time.perf_counter() - started, 1),
                       trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
        write_checkpoint(pending.folder, model=name, config=config, labels=labels,
                         components={"backbone": component}, data=_encoder_data(n_train, n_val, command),
                         metrics=metrics)
    return pending.checkpoint


def _clips(turns: list[Turn]) -> list[np.ndarray]:
    """The turns' audio as 16 kHz mono, read as the app reads media."""
    return [load_audio(turn.audio, sr=16000) for turn in turns]


def train_tower_speech_encoder(
    dialogues_train: Sequence[Dialogue],
    dialogues_val: Sequence[Dialogue],
    labels: Sequence[str],
    backbone: str,
    epochs: int = 3,
    lr: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
    *,
    out_dir: Path | None,
    embed_dim: int = 256,
    device: str | None = None,
    max_steps_per_epoch: int | None = None,
    command: str | None = None,
    gradient_checkpointing: bool = False,
    bf16: bool = False,
) -> Checkpoint:
    """Fine-tune the audio tower of the Qwen2-Audio model `backbone` (hub id or folder) with LoRA, plus
    an attentive-pooling head, on the turns' clips into a "qwen2-audio-tower" "speech-encoder"
    checkpoint (in `out_dir`, which must not hold one yet, or a new version in the model store);
    `gradient_checkpointing` and `bf16` as for `train_text_encoder`."""
    labels = list(labels)
    train_turns, y_train = _labelled(dialogues_train, labels, need_audio=True)
    val_turns, y_val = _labelled(dialogues_val, labels, need_audio=True)
    _require(train_turns, "train", " with audio")
    _require(val_turns, "validation", " with audio")
    _seed_everything(seed)
    tower, extractor = load_audio_tower(backbone)
    component = backbone_component(backbone)  # after loading: a hub model's revision is then in the cache
    apply_lora(tower, **lora_dict(SPEECH_LORA))
    head = HeadConfig(n_labels=len(labels), embed_dim=embed_dim)
    model = AudioTowerEncoder(tower, head).to(device or get_settings().torch_device())
    config = {"kind": TOWER_KIND, "backbone": component["name"], "head": asdict(head), "lora": lora_dict(SPEECH_LORA)}

    def clips_of(turns: list[Turn]) -> Callable[[np.ndarray], dict]:
        # decoded batch by batch: a corpus's clips need not fit in memory
        return lambda idx: tower_inputs(extractor, _clips([turns[i] for i in idx]))

    return _fit_encoder(
        model, SPEECH_ENCODER, config, component, (clips_of(train_turns), y_train, len(train_turns)),
        (clips_of(val_turns), y_val, len(val_turns)), labels, epochs, lr, batch_size, seed, out_dir,
        max_steps_per_epoch, "speech stage 1", command, gradient_checkpointing, bf16,
    )


def embedding_cache_root(cache_root: Path | None) -> Path:
    return Path(cache_root) if cache_root is not None else get_settings().cache_dir / "embeddings"


def feature_class_ids(features: CorpusFeatures, dialogues: Sequence[Dialogue], labels: Sequence[str]) -> np.ndarray:
    """Class id of each feature row (-1 for an unlabelled turn)."""
    turns = {(d.id, i): t for d in dialogues for i, t in enumerate(d.turns)}
    ids = []
    for dialogue_id, i in features.turns:
        label = turns[(dialogue_id, i)].label
        ids.append(-1 if label is None else list(labels).index(
            normalize_label(label, tuple(labels), where=f"dialogue {dialogue_id} turn {i}")))
    return np.array(ids, dtype=np.int64)


class _OnNormalized(torch.nn.Module):
    """The speech encoder's classifier on inputs already normalised within their groups (a group's
    statistics come from all of its clips, so they cannot be taken batch by batch)."""

    def __init__(self, encoder: FeatureSpeechEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        return self.encoder.head.classify(self.encoder.embed_normalized(normalized))


def _normalized(model: FeatureSpeechEncoder, features: CorpusFeatures, targets: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """The labelled rows of `features`, normalised within their groups, and their class ids."""
    with torch.no_grad():
        z = model.normalize(torch.from_numpy(features.vectors), torch.from_numpy(features.groups))
    keep = targets >= 0
    return z[torch.from_numpy(keep)], targets[keep]


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
    shrink: float | None = 8.0,
    augmented_copies: int = 0,
    val_conditions: Sequence[str] = (),
    cache_root: Path | None = None,
    device: str | None = None,
    max_steps_per_epoch: int | None = None,
    command: str | None = None,
) -> Checkpoint:
    """Train the offline speech encoder (a head over pooled Whisper base states of the turns' audio,
    normalised per speaker group) into a "speech-encoder" checkpoint (in `out_dir`, which must not
    hold one yet, or the model store). Train clips are read clean and in `augmented_copies` degraded
    copies; the epoch is chosen on the validation clips clean and through each of `val_conditions`."""
    labels = list(labels)
    train_turns, _ = _labelled(dialogues_train, labels, need_audio=True)
    val_turns, _ = _labelled(dialogues_val, labels, need_audio=True)
    _require(train_turns, "train", " with audio")
    _require(val_turns, "validation", " with audio")
    root = embedding_cache_root(cache_root)
    train_sets = [clean_features(dialogues_train, root)]
    train_sets += [augmented_features(dialogues_train, root, copy) for copy in range(1, augmented_copies + 1)]
    val_sets = {name: condition_features(dialogues_val, root, name) for name in ("clean", *val_conditions)}
    _seed_everything(seed)
    config = FeatureEncoderConfig(in_dim=train_sets[0].vectors.shape[1], n_labels=len(labels),
                                  hidden_dim=hidden_dim, embed_dim=embed_dim, shrink=shrink)
    encoder = FeatureSpeechEncoder(config)
    encoder.set_standardization(np.concatenate([f.vectors for f in train_sets]))
    train_rows = [_normalized(encoder, f, feature_class_ids(f, dialogues_train, labels)) for f in train_sets]
    val_rows = {name: _normalized(encoder, f, feature_class_ids(f, dialogues_val, labels)) for name, f in val_sets.items()}
    x_train, y_train = torch.cat([x for x, _ in train_rows]), np.concatenate([y for _, y in train_rows])
    x_val, y_val = torch.cat([x for x, _ in val_rows.values()]), np.concatenate([y for _, y in val_rows.values()])
    model = _OnNormalized(encoder).to(device or get_settings().torch_device())

    def rows_of(x: torch.Tensor) -> Callable[[np.ndarray], dict]:
        return lambda idx: {"normalized": x[torch.from_numpy(idx)]}

    with checkpoint_output(out_dir, SPEECH_ENCODER) as pending:
        started = time.perf_counter()
        metrics = _fit(
            model, rows_of(x_train), y_train,
            lambda: _predict(model, rows_of(x_val), len(y_val), 1024), y_val,
            labels, epochs, lr, batch_size, seed, lambda: _save_weights(encoder, pending.folder),
            max_steps_per_epoch, desc="speech stage 1",
        )
        encoder.load_state_dict(load_file(str(pending.folder / "model.safetensors")))
        metrics["val_uar"] = {}
        for name, (x, y) in val_rows.items():
            gold = [labels[i] for i in y]
            predicted = [labels[i] for i in _predict(model, rows_of(x), len(y), 1024)]
            report = classification_report(gold, predicted, labels, present=sorted(set(gold), key=labels.index))
            metrics["val_uar"][name] = round(unweighted_average_recall(report), 4)
        metrics.update(seconds=round(time.perf_counter() - started, 1))
        write_checkpoint(pending.folder, model=SPEECH_ENCODER,
                         config={"kind": SPEECH_KIND, "features": FEATURE_VERSION, "encoder": asdict(config),
                                 "augmented_copies": augmented_copies, "val_conditions": list(val_conditions)},
                         labels=labels, components=speech_components(),
                         data=_encoder_data(len(y_train), len(y_val), command), metrics=metrics)
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


def _tower_embedder(checkpoint: Checkpoint, device: str) -> _Embedder:
    encoder = load_speech_encoder(checkpoint, device)
    return _Embedder(lambda turn: turn.audio is not None, lambda turn: Path(turn.audio), file_key,
                     lambda paths: encoder.embed([load_audio(p, sr=16000) for p in paths]).numpy())


def extract_embeddings(
    checkpoint: Checkpoint,
    dialogues: Sequence[Dialogue],
    cache_root: Path | None = None,
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, DialogueEmbeddings]:
    """Per-dialogue embeddings from a stage-1 encoder checkpoint, through the embedding cache.

    Text and Qwen2-Audio tower embeddings are cached keyed by the checkpoint's version, so retraining
    never serves stale vectors; offline speech embeddings are computed from the cached pooled Whisper
    states of each recording.
    """
    device = device or get_settings().torch_device()
    if checkpoint.model == TEXT_ENCODER:
        embedder = _text_embedder(checkpoint, device)
    elif checkpoint.config.get("kind") == TOWER_KIND:
        embedder = _tower_embedder(checkpoint, device)
    else:
        return _speech_embeddings(checkpoint, dialogues, cache_root, device)
    dim = embedding_dim(checkpoint)
    cache = EmbeddingCache(embedding_cache_root(cache_root), checkpoint.model, checkpoint.version)
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


def _speech_embeddings(
    checkpoint: Checkpoint, dialogues: Sequence[Dialogue], cache_root: Path | None, device: str
) -> dict[str, DialogueEmbeddings]:
    """Per-dialogue speech embeddings: each recording's clips packed and pooled as the app does,
    then normalised within their (recording, speaker) groups."""
    encoder = load_speech_encoder(checkpoint, device)
    features = clean_features(dialogues, embedding_cache_root(cache_root), lambda: encoder.states)
    vectors = encoder.embed_features(features.vectors, features.groups).numpy() if features.turns else None
    rows = {turn: row for row, turn in enumerate(features.turns)}
    dim, out = embedding_dim(checkpoint), {}
    for dialogue in dialogues:
        emb = np.zeros((len(dialogue.turns), dim), dtype=np.float32)
        present = np.zeros(len(dialogue.turns), dtype=bool)
        for i in range(len(dialogue.turns)):
            row = rows.get((dialogue.id, i))
            if row is not None:
                emb[i], present[i] = vectors[row], True
        out[dialogue.id] = DialogueEmbeddings(emb, present)
    return out
