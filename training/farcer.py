"""Train and evaluate FARCER: a frozen core LM (the packaged SmolLM2-135M-Instruct by default, a hub
model, or a small Llama trained here with `--core new`) plus a projector and LoRA adapters.

    python -m training train farcer --corpus meld --data ../shared/data/meld --variant lora --shots 0
    python -m training evaluate farcer --core smollm2 --corpus meld --data ../shared/data/meld \
        --split test --calibrate --out runs/smollm2-zero-shot.json   # the core with no training
    python -m training evaluate farcer --checkpoint checkpoints/farcer --corpus meld --data ../shared/data/meld \
        --split test --paired-faces neutral --face-corpus fer2013 --face-data ../shared/data/fer2013 \
        --out runs/farcer-test-neutral-faces.json

Each run writes a checkpoint (backend.checkpoints) as a new version in the model store, or into a new
`--out` folder: a "farcer-core" one (the LM + tokenizer) when it trains the core, else a "farcer" one
holding the projector (+ LoRA adapters) whose components name the core and the face encoder at their
versions (backend.farcer_predictor reads both).

Faces: MELD ships no frames here, so with `--faces FOLDER` every turn is paired with a face from a
FER2013-style image folder (training/pseudo_pairs.py; seeded): by `--face-mix`, one of the turn's
emotion, a neutral one or one of a random emotion, so that the face is no more reliable than in real
conversation (label-matched faces alone teach a head to read the face and ignore the words, issue
12). `--neutral-lines N` adds N dialogues of emotion-neutral lines each beside a face and labelled by
it, where the face decides. Faces are encoded once (vectors cached on disk) with the face encoder: the
offline face-encoder checkpoint, or with `--face-encoder` a Hugging Face ViT (the paper's
vit-face-expression, a hub id or local folder), whose CLS vector the projector then reads; they come
from images the encoder never trained on (FACE_POOLS). Validation then reports (and selects on) only
views that do not leak the label: text only, neutral faces, random faces and the neutral lines. In
evaluation, `--paired-faces neutral|random` and `--neutral-lines` are the honest views; label-matched
faces (`--faces`, `--paired-faces matched`) are a pipeline check. A corpus CSV's `face` column gives
turns their own faces. `--projector-only` trains the face slot alone on top of a text head (`--init`),
whose text-only labels it then keeps exactly. Faces reach only a head trained with faces; any other
model is evaluated text only and its report says so (`faces_used: false`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from backend.checkpoints import MANIFEST, Checkpoint, read_checkpoint, update_metrics, write_checkpoint
from backend.dialogue import Dialogue, LabelledImage, Turn
from backend.errors import InputError, ModelUnavailableError
from backend.face_encoder import MODEL as FACE_ENCODER
from backend.face_encoder import build_model as build_face_encoder
from backend.face_encoder import model_config as face_encoder_config
from backend.face_encoder import load_vit, normalise, to_pixels, vit_feature_dim
from backend.farcer_predictor import (
    CORE,
    MODEL,
    WEIGHTS,
    load_core,
    load_farcer,
    load_trainable,
    save_trainable,
    trained_with_faces,
)
from backend.hub_components import hub_component
from backend.farcer_processor import (
    SHOT_COUNTS,
    Example,
    FarcerProcessor,
    face_weighted,
    sample_shots,
    training_prompts,
)
from backend.model_store import ModelStore, open_model_store
from backend.packaged import PACKAGED, packaged_for
from backend.settings import get_settings
from models.farcer import PAST_LABELS, Farcer, FarcerConfig, apply_lora
from training.corpora.image_folder import load_image_folder
from training.corpora.registry import CORPORA, corpus_labels, load_corpus, split
from training.corrections import add_corrections_args, card_section, load_corrections
from training.distributed import (
    build_accelerator,
    distributed,
    enable_gradient_checkpointing,
    map_shards,
    prepare,
    shard_bounds,
)
from training.face_encoder import BUILTIN as FACE_ENCODER_BUILTIN
from training.face_encoder import load_pixels
from training.farcer_core import CoreConfig, new_core, save_core, train_tokenizer
from training.farcer_corrections import corrected_train, views_lines
from training.metrics import classification_report
from training.outputs import checkpoint_output, find_checkpoint, reproducible
from training.pseudo_pairs import (
    LABEL_MATCHED,
    PAIRED_VIEWS,
    PIPELINE_CHECKS,
    PairMix,
    mix_arg,
    neutral_line_dialogues,
    pair_images,
)

VARIANTS = ("base", "three-layer", "lora")
FACE_CORPORA = ("fer2013",)  # folder-per-class face corpora (training/corpora/image_folder.py)
PROTOCOLS = ("every", "last-turn")
# The image-folder split (and half of it) each FARCER split draws its faces from. The face encoder
# trained on the folder's train split, so its features there are those of faces it memorised: a
# projector trained on them would learn to trust a face more than the app ever can (issue 12: a stage-2
# model learns from held-out stage-1 outputs). FARCER therefore trains on every second image of the
# held-out val split, validates on the others, and tests on the test split.
FACE_POOLS = {"train": ("val", 0), "validation": ("val", 1), "test": ("test", None)}
PAST_NOTE = {
    "none": "no labels on past turns",
    "gold": "gold past labels in training and validation: an oracle",
    "predicted": "gold past labels in training, the model's own in validation",
    "mixed": "each training row without or with gold past labels; validation with the model's own",
}


@dataclass
class TrainConfig:
    variant: str = "base"
    shots: int = 7
    prompts: int = 10  # distinct seeded k-shot prompts rotated through in training
    past_labels: str = "none"  # training shows gold past labels for gold and predicted
    epochs: int = 2
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    text_weight: float = 0.0  # weight of the LM loss on the dialogue text (1 when training a core)
    min_turns: int = 5
    max_turns: int = 21
    targets: str = "every"  # every: each turn of a (cut) dialogue is a target; last: the last turn of a sub-dialogue
    max_steps: int = 0  # 0: whole epochs; otherwise stop after this many optimiser steps
    face_drop_turn: float = 0.2  # teach the model to label turns whose face was not found
    face_drop_dialogue: float = 0.3
    # PairMix shares (matched, neutral, random) of the faces paired with corpus turns: as MiSTER-E's speech
    face_mix: tuple[float, float, float] = (0.3, 0.3, 0.4)
    neutral_lines: int = 0  # training dialogues of emotion-neutral lines beside a face that decides the label
    projector_only: bool = False  # train the face slot alone; the adapters (and label bias) stay the --init head's
    # a step whose validation with random-emotion faces falls more than this below text only is chosen only
    # when no step keeps within it (issue 12: a face unrelated to the words must not overrule them)
    face_tolerance: float = 0.03
    val_dialogues: int = 0  # 0: the whole validation split
    seed: int = 0
    lora_r: int = 8  # the paper's adapters: r8/a16/0.1 on q/k/v
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    lora_layers: int = 0  # adapters on the core's last this many decoder layers; 0: on all (the paper)
    accumulate: int = 1  # batches per optimiser step
    max_minutes: float = 0.0  # 0: no time budget; otherwise stop (and validate) once it is spent
    val_every: int = 0  # 0: validate after each epoch; otherwise every this many optimiser steps
    bf16: bool = False  # bf16 autocast for the forward pass (CPUs with avx512_bf16 and GPUs)
    gradient_checkpointing: bool = False  # recompute the core's activations in backward (7-8B cores)


# ----------------------------------------------------------------------------- data


@dataclass
class Split:
    dialogues: list[Dialogue]
    faces: list[list[np.ndarray | None]]  # per dialogue, per turn
    views: dict[str, range] | None = None  # named runs of dialogues, reported apart in validation


def load_split(corpus: str, data: Path, name: str, limit: int = 0) -> Split:
    """A corpus split (its first `limit` dialogues, 0: all), text only."""
    dialogues = split(load_corpus(corpus, data), name)
    if not dialogues:
        raise InputError(f"{data}: the {corpus} corpus has no {name!r} dialogues")
    dialogues = dialogues[:limit] if limit else dialogues
    return Split(dialogues, [[None] * len(d) for d in dialogues])


def face_pool(folder: Path, labels: Sequence[str], name: str) -> list[LabelledImage]:
    """The images of `folder` (of the classes `labels`) that FARCER's split `name` draws faces from
    (FACE_POOLS), in a fixed order."""
    folder_split, half = FACE_POOLS[name]
    images = sorted(load_image_folder(folder, tuple(labels), split=folder_split).images, key=lambda i: str(i.path))
    return images if half is None else images[half::2]


def paired_faces(
    dialogues: Sequence[Dialogue], folder: Path, name: str, encoder: Checkpoint | str, seed: int, mix: PairMix,
) -> list[list[np.ndarray | None]]:
    """Each labelled turn gets the feature of a face from split `name`'s pool, drawn by `mix` (seeded:
    `pair_images`); turns whose drawn emotion has no face there get none."""
    labels = tuple(dict.fromkeys(t.label for d in dialogues for t in d.turns if t.label))
    images = face_pool(folder, (*labels, *(("neutral",) if mix.neutral else ())), name)
    chosen = pair_images([[t.label for t in d.turns] for d in dialogues], [i.label for i in images],
                         np.random.default_rng(seed), mix)
    return face_vectors([[None if i is None else images[i].path for i in row] for row in chosen], encoder)


def face_vectors(paths: Sequence[Sequence[Path | None]], encoder: Checkpoint | str) -> list[list[np.ndarray | None]]:
    """Per dialogue, per turn: the feature of the face image at that path (None: no face)."""
    unique = sorted({p for row in paths for p in row if p is not None})
    vectors = dict(zip(unique, face_features(unique, encoder))) if unique else {}
    return [[None if p is None else vectors[p] for p in row] for row in paths]


def own_faces(dialogues: Sequence[Dialogue], encoder: Checkpoint | str | None) -> list[list[np.ndarray | None]]:
    """Each turn's own face (`Turn.face`, a corpus CSV's face column) as a feature; None without one, or
    for every turn without an `encoder` (a run without faces)."""
    if encoder is None:
        return [[None] * len(d) for d in dialogues]
    return face_vectors([[t.face for t in d.turns] for d in dialogues], encoder)


def neutral_line_split(
    folder: Path, labels: Sequence[str], name: str, n: int, encoder: Checkpoint | str, seed: int,
) -> Split:
    """`n` dialogues of split `name`'s emotion-neutral lines, each beside a face of its pool that gives
    the turn its label (`neutral_line_dialogues`)."""
    dialogues = neutral_line_dialogues(face_pool(folder, labels, name), n, name, np.random.default_rng(seed))
    return Split(dialogues, own_faces(dialogues, encoder))


def validation_views(
    dialogues: Sequence[Dialogue], folder: Path, labels: Sequence[str], neutral_lines: int,
    encoder: Checkpoint | str, seed: int,
) -> Split:
    """Validation of a head that reads faces, on views that do not leak the label (issue 12): the
    dialogues text only, with a neutral face on every turn, with a face of a random emotion, and (with
    `neutral_lines`) that many dialogues of emotion-neutral lines whose faces decide. Selection is on
    all of them pooled; each is reported apart."""
    views = [("text", Split(list(dialogues), [[None] * len(d) for d in dialogues]))]
    views += [(view, Split(list(dialogues), paired_faces(dialogues, folder, "validation", encoder, seed,
                                                         PAIRED_VIEWS[view]))) for view in ("neutral", "random")]
    if neutral_lines:
        views.append(("neutral-lines", neutral_line_split(folder, labels, "validation", neutral_lines, encoder, seed)))
    out, ranges = Split([], []), {}
    for name, view in views:
        ranges[name] = range(len(out.dialogues), len(out.dialogues) + len(view.dialogues))
        out.dialogues.extend(view.dialogues)
        out.faces.extend(view.faces)
    out.views = ranges
    return out


def face_features(paths: Sequence[Path], encoder: Checkpoint | str) -> np.ndarray:
    """[N, feature_dim] features of image files from a face-encoder checkpoint or a Hugging Face ViT
    (its CLS vector, as the app computes it from RGB crops), cached on disk."""
    identity = json.dumps(hub_component(encoder), sort_keys=True) if isinstance(encoder, str) else (
        f"{encoder.model}\t{encoder.version}")
    digest = hashlib.sha1(f"{identity}\n".encode())
    for path in paths:
        digest.update(f"{Path(path).resolve()}\t{Path(path).stat().st_size}\n".encode())
    cache = get_settings().cache_dir / "farcer-faces" / f"{digest.hexdigest()[:20]}.npy"
    if cache.exists():
        return np.load(cache)
    if isinstance(encoder, str):
        out = _vit_features(paths, encoder)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, out)
        return out
    model = build_face_encoder(encoder, open_model_store(get_settings()), "cpu")
    pixels = load_pixels([LabelledImage(Path(p), "") for p in paths], model.config.image_size)
    with torch.no_grad():
        out = np.concatenate([
            model.features(normalise(to_pixels(torch.from_numpy(pixels[i : i + 512])), model.config)).numpy()
            for i in range(0, len(pixels), 512)
        ])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, out.astype(np.float32))
    return out.astype(np.float32)


def _vit_features(paths: Sequence[Path], name: str, batch: int = 64) -> np.ndarray:
    vit = load_vit(name, get_settings().torch_device())
    rgb = [cv2.cvtColor(_read_image(p), cv2.COLOR_BGR2RGB) for p in paths]
    return np.concatenate([vit(rgb[i : i + batch]).cpu().numpy() for i in range(0, len(rgb), batch)]).astype(np.float32)


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not a readable image; remove it from the face folder")
    return image


def drop_faces(faces: list[np.ndarray | None], cfg: TrainConfig, rng: random.Random) -> list[np.ndarray | None]:
    """The row's faces with the whole row's dropped (face_drop_dialogue) or single turns' dropped
    (face_drop_turn); rows without faces, or no dropout, draw nothing from `rng`."""
    if all(f is None for f in faces) or not (cfg.face_drop_turn or cfg.face_drop_dialogue):
        return faces
    if rng.random() < cfg.face_drop_dialogue:
        return [None] * len(faces)
    return [None if rng.random() < cfg.face_drop_turn else f for f in faces]


def shot_pool(dialogues: Sequence[Dialogue], seed: int, size: int = 200) -> list[Example]:
    """Few-shot examples: 1-3 consecutive turns ending at a random turn of a training dialogue
    (text only, as in the released code)."""
    rng = random.Random(seed)
    pool = []
    for d in rng.sample(list(dialogues), min(size, len(dialogues))):
        end = rng.randrange(len(d))
        pool.append(Example(tuple(d.turns[max(0, end - rng.randint(0, 2)) : end + 1])))
    return pool


@dataclass(frozen=True)
class Sample:
    dialogue: int
    start: int
    end: int
    targets: tuple[int, ...]  # indices into turns[start:end]


def make_samples(dialogues: Sequence[Dialogue], cfg: TrainConfig, seed: int) -> list[Sample]:
    """`every`: each dialogue cut into pieces of at most max_turns, every turn a target; `last`: one
    sub-dialogue of min_turns-max_turns turns (fewer at the start) ending at each turn, which is its
    target. Pieces never cross dialogues."""
    if not 1 <= cfg.min_turns <= cfg.max_turns:
        raise InputError(f"need 1 <= min_turns <= max_turns, got {cfg.min_turns} and {cfg.max_turns}")
    rng = random.Random(seed)
    samples = []
    for index, d in enumerate(dialogues):
        if cfg.targets == "every":
            for start in range(0, len(d), cfg.max_turns):
                end = min(len(d), start + cfg.max_turns)
                samples.append(Sample(index, start, end, tuple(range(end - start))))
        else:
            for end in range(1, len(d) + 1):
                start = max(0, end - rng.randint(cfg.min_turns, cfg.max_turns))
                samples.append(Sample(index, start, end, (end - start - 1,)))
    return samples


# ----------------------------------------------------------------------------- checkpoints


def resolve_core(ref: str) -> Checkpoint | str:
    """--core: a packaged LM by name (e.g. "smollm2"), a farcer-core checkpoint folder or store version
    (or built-in folder name), else a Hugging Face name (hub id or local folder) to load as the core."""
    if ref in PACKAGED:
        return ref
    try:
        return find_checkpoint(ref, CORE)
    except ModelUnavailableError:
        if (Path(ref) / MANIFEST).is_file():
            raise
        return ref


def resolve_face_encoder(ref: str | None) -> Checkpoint | str:
    """--face-encoder: a face-encoder checkpoint folder or store version (default: the shipped one),
    else a Hugging Face ViT name (hub id or local folder)."""
    try:
        return find_checkpoint(ref or FACE_ENCODER_BUILTIN, FACE_ENCODER)
    except ModelUnavailableError:
        if ref is None or (Path(ref) / MANIFEST).is_file():
            raise
        return ref


def component(source: Checkpoint | str, store: ModelStore) -> dict:
    """How a farcer checkpoint names a component it was trained with. A checkpoint component must be in
    the model store (a built-in folder or a stored version) for the head to load."""
    if isinstance(source, str):
        return PACKAGED[source].component() if source in PACKAGED else hub_component(source)
    if not any(v.version == source.version for v in store.versions(source.model)):
        raise InputError(
            f"{source.path} is not in the model store, so a head trained on it could not find it; train it "
            "without --out (a new store version) and name its version"
        )
    return {"kind": "checkpoint", "model": source.model, "version": source.version}


def write(folder: Path, manifest: dict, card: bool = False) -> None:
    """The manifest (and, with `card`, the model card) of the weights already saved in `folder`."""
    write_checkpoint(folder, **manifest, card=model_card(manifest) if card else None)


# ----------------------------------------------------------------------------- evaluation


CONTENT_FREE = ("N/A", "[MASK]", "")
PRIOR_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


@torch.no_grad()
def label_scores(
    farcer: Farcer, processor: FarcerProcessor, data: Split, shots: Sequence[Example], past_labels: str,
) -> list[np.ndarray]:
    """Per dialogue, every turn's label scores [turns, labels] (the model's label bias included)."""
    prefix = processor.encode_prefix(farcer, shots, past_labels)
    return [processor.label_dialogue(farcer, d.turns, faces, prefix, past_labels).logprobs.float().cpu().numpy()
            for d, faces in zip(tqdm(data.dialogues, desc="labelling", leave=False), data.faces)]


def label_split(
    farcer: Farcer, processor: FarcerProcessor, data: Split, shots: Sequence[Example], past_labels: str,
) -> list[list[str]]:
    """Every turn's predicted label (the best of its `label_scores`), dialogue by dialogue."""
    return [[processor.labels[int(i)] for i in scores.argmax(-1)]
            for scores in label_scores(farcer, processor, data, shots, past_labels)]


def best_label_bias(
    scores: Sequence[np.ndarray], data: Split, labels: Sequence[str], label_counts: Mapping[str, int],
) -> tuple[dict, list[list[str]]]:
    """A prior correction chosen on validation (logit adjustment, Menon et al. 2021). The balanced label
    loss trains a head toward p(label | dialogue) / prior(label), which over-predicts rare labels;
    adding scale x log prior(label) to the unbiased label `scores` brings the prior back. The scale (from
    PRIOR_SCALES; 0 keeps the head as trained, ties go to the smaller) is the one with the best weighted
    F1 on `data`. Returns ({scale, bias, validation: {scale: weighted F1}, n}, the labels at that scale)."""
    counts = np.array([float(label_counts.get(label, 0)) for label in labels]).clip(min=1)
    log_prior = np.log(counts / counts.sum())
    true = [t.label for d in data.dialogues for t in d.turns]
    present = sorted(set(true), key=list(labels).index)
    flat = np.concatenate(scores)
    by_scale = {}
    for scale in PRIOR_SCALES:
        predicted = [labels[int(i)] for i in (flat + scale * log_prior).argmax(-1)]
        by_scale[scale] = classification_report(true, predicted, labels, present)["weighted_f1"]
    best = max(PRIOR_SCALES, key=lambda scale: (by_scale[scale], -scale))
    chosen = {"scale": best, "bias": [round(float(b), 6) for b in best * log_prior] if best else [],
              "validation": {str(k): round(v, 4) for k, v in by_scale.items()}, "n": len(true)}
    return chosen, [[labels[int(i)] for i in (row + best * log_prior).argmax(-1)] for row in scores]


def choose_label_bias(
    farcer: Farcer, processor: FarcerProcessor, val: Split, shots: Sequence[Example], past_labels: str,
    label_counts: Mapping[str, int],
) -> tuple[dict, list[list[str]]]:
    """`best_label_bias` of the head on `val`, set on `farcer`; returns its {scale, bias, validation, n}
    and `val`'s labels with it."""
    if past_labels == "predicted":
        raise InputError("a label bias is chosen for heads that do not read their own past labels (past labels "
                         "none or gold): with predicted past labels each scale would need its own labelling")
    farcer.set_label_bias(())
    chosen, predicted = best_label_bias(label_scores(farcer, processor, val, shots, past_labels), val,
                                        processor.labels, label_counts)
    farcer.set_label_bias(chosen["bias"])
    return chosen, predicted


FACE_WEIGHTS = tuple(i / 10 for i in range(11))


def choose_face_weight(
    farcer: Farcer, processor: FarcerProcessor, val: Split, shots: Sequence[Example], past_labels: str,
    tolerance: float,
) -> tuple[dict, list[list[str]]]:
    """The face weight (FarcerConfig.face_weight, from FACE_WEIGHTS) that is best on the validation views
    `val` (`validation_views`) by `selection_key`: the best pooled weighted F1 among the weights whose
    random-emotion-face view stays within `tolerance` of text only. Set on `farcer`; returns {weight,
    tolerance, validation: {weight: pooled and per-view weighted F1}, n} and `val`'s labels with it.
    Each dialogue is scored once with its faces and once without (views share their dialogues)."""
    farcer.set_face_weight(1.0)
    with_faces = label_scores(farcer, processor, val, shots, past_labels)
    unique = list({id(d): d for d in val.dialogues}.values())
    text_only = dict(zip(map(id, unique), label_scores(
        farcer, processor, Split(unique, [[None] * len(d) for d in unique]), shots, past_labels)))
    results = {}
    for weight in FACE_WEIGHTS:
        predicted = [[processor.labels[int(j)] for j in face_weighted(text_only[id(d)], f, weight).argmax(-1)]
                     for d, f in zip(val.dialogues, with_faces)]
        results[weight] = (reports(val, predicted, processor.labels), predicted)
    best = max(FACE_WEIGHTS, key=lambda w: (selection_key(results[w][0], tolerance), w))  # ties: the larger
    farcer.set_face_weight(best)
    chosen = {"weight": best, "tolerance": tolerance, "n": results[best][0]["n"], "validation": {
        str(w): {"pooled": round(r["weighted_f1"], 4), **{k: round(v["weighted_f1"], 4) for k, v in r["views"].items()}}
        for w, (r, _) in results.items()}}
    return chosen, results[best][1]


@torch.no_grad()
def content_free_bias(farcer: Farcer, processor: FarcerProcessor, shots: Sequence[Example]) -> torch.Tensor:
    """Contextual calibration (Zhao et al., 2021): log of the mean label distribution the model gives
    one-line dialogues with content-free text; subtracting it removes the model's prior over labels."""
    prefix = processor.encode_prefix(farcer, shots, "none")
    probs = torch.stack([
        processor.label_dialogue(farcer, [Turn("Speaker", None, None, text)], None, prefix, "none").probs[0]
        for text in CONTENT_FREE
    ]).mean(0)
    return (probs / probs.sum()).log()


def reports(data: Split, predicted: list[list[str]], labels: Sequence[str], protocol: str = "every") -> dict:
    """The every-utterance report (REPORT_KEYS), plus `last_turn` for the paper's protocol and, for a
    split of named views, each view's report under `views`."""
    present = sorted({t.label for d in data.dialogues for t in d.turns}, key=labels.index)
    true = [t.label for d in data.dialogues for t in d.turns]
    report = classification_report(true, [p for row in predicted for p in row], labels, present)
    if protocol == "last-turn":
        last = [d.turns[-1].label for d in data.dialogues]
        report["last_turn"] = classification_report(last, [row[-1] for row in predicted], labels, present)
    if data.views:
        report["views"] = {name: reports(Split([data.dialogues[i] for i in run], []), predicted[run.start : run.stop],
                                         labels) for name, run in data.views.items()}
    return report


# ----------------------------------------------------------------------------- training


def _cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


def start_from(farcer: Farcer, ref: str, labels: tuple[str, ...], components: dict, variant: str) -> Checkpoint:
    """Load the trained adapters and projector of the head `ref` names into `farcer` (built by this run);
    the head it names must have been built the same way, or an InputError says what differs."""
    init = find_checkpoint(ref, MODEL)
    differs = [what for what, same in (
        ("labels", init.labels == labels),
        ("core", init.components.get("core") == components.get("core")),
        ("face encoder", init.components.get("face_encoder") == components.get("face_encoder")),
        ("variant", init.config.get("variant") == variant),
    ) if not same]
    if not differs:
        try:
            load_trainable(farcer, init.file(WEIGHTS))
        except (ModelUnavailableError, ValueError, RuntimeError) as exc:
            differs.append(f"adapters or projector ({exc})")
    if differs:
        raise InputError(f"--init {ref}: that head differs from this run's in its {', '.join(differs)}; "
                         "give the same --core, --variant, --lora-* and --face-encoder, or train from scratch")
    return init


def build_model(
    args: argparse.Namespace, cfg: TrainConfig, labels: tuple[str, ...], train: Split,
    core: Checkpoint | str | None, image_dim: int,
) -> tuple[Farcer, FarcerProcessor, dict | None]:
    """The model to train, its processor, and the core's CoreConfig dict when the core is trained."""
    projector = "three-layer" if cfg.variant == "three-layer" else "base"
    model = FarcerConfig(image_dim=image_dim, projector=projector, max_context=args.context)
    if core is None:
        if args.hidden_size % 64:
            raise InputError(f"--hidden-size must be a multiple of 64 (heads of 64), got {args.hidden_size}")
        tokenizer = train_tokenizer([t.text for d in train.dialogues for t in d.turns] +
                                    [t.speaker for d in train.dialogues for t in d.turns], args.vocab_size)
        core_config = CoreConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                                 intermediate_size=3 * args.hidden_size, num_hidden_layers=args.layers,
                                 num_attention_heads=args.hidden_size // 64, context=args.context)
        processor = FarcerProcessor(tokenizer, labels)
        lm = new_core(tokenizer, core_config, cfg.seed)
        farcer = Farcer(lm, model, processor.label_ids, processor.end_ids)
        farcer.lm.requires_grad_(True)
        farcer.projector.requires_grad_(False)  # a text-only stage: no image slots to train
        return farcer, processor, core_config.to_dict()
    lm, tokenizer = load_core(core, get_settings().torch_device())
    processor = FarcerProcessor(tokenizer, labels)
    farcer = Farcer(lm, model, processor.label_ids, processor.end_ids).eval()
    if args.train_core:
        farcer.lm.requires_grad_(True)
        farcer.projector.requires_grad_(False)
        return farcer, processor, core.config["core_config"]
    if cfg.variant == "lora":
        apply_lora(farcer, cfg.lora_r, cfg.lora_alpha, targets=cfg.lora_targets, layers=cfg.lora_layers)
    return farcer, processor, None


@dataclass
class RunState:
    """Where a training run is, saved at each validation so that `--resume` continues from there."""

    step: int = 0  # optimiser steps done
    epoch: int = 1
    position: int = 0  # batches of this epoch's order already used
    order: list[int] | None = None  # this epoch's sample order
    best: dict | None = None
    curve: list[dict] | None = None
    seconds: float = 0.0  # training time spent before this process


def save_state(path: Path, state: RunState, farcer: Farcer, opt, sched, rng: random.Random) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"run": asdict(state), "trainable": farcer.trainable_state(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": rng.getstate(), "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def load_state(path: Path, farcer: Farcer, opt, sched, rng: random.Random) -> RunState:
    saved = torch.load(path, weights_only=False)
    farcer.load_trainable_state(saved["trainable"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    rng.setstate(saved["rng"])
    torch.set_rng_state(saved["torch_rng"])
    return RunState(**saved["run"])


class _PackedLoss(torch.nn.Module):
    """`Farcer.packed_loss` as a module's forward, so that DDP (which hooks `forward`) can wrap it."""

    def __init__(self, farcer: Farcer):
        super().__init__()
        self.farcer = farcer

    def forward(self, rows: list, text_weight: float, start_layer: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.farcer.packed_loss(rows, text_weight, start_layer)


class FrozenStates:
    """Text-only rows enter the first decoder layer that trains with the states the frozen layers below
    give them, computed without gradient (no activations kept, no backward through them). A row that is
    the same every epoch (no shots to rotate, fixed past labels) keeps its states after the first."""

    def __init__(self, farcer: Farcer, reusable: bool):
        frozen = farcer.frozen_layers
        # nothing of the core trains (--projector-only): text-only rows teach nothing, and rows with
        # faces need every layer's gradient on their way down to the projector
        self.layers = 0 if frozen == len(farcer.lm.get_decoder().layers) else frozen
        self.reusable, self.saved = reusable, {}

    def rows(self, farcer: Farcer, keys: Sequence[int | None], rows: list, text_only: bool) -> tuple[list, int]:
        """The rows to train on and the decoder layer they enter; rows with image slots enter at the
        bottom, since the projector that fills the slots trains."""
        if not self.layers or not text_only:
            return rows, 0
        missing = [i for i, k in enumerate(keys) if k not in self.saved]
        computed = dict(zip(missing, farcer.frozen_states([rows[i] for i in missing], self.layers) if missing else []))
        if self.reusable:
            self.saved.update({keys[i]: state for i, state in computed.items() if keys[i] is not None})
        states = [computed[i] if i in computed else self.saved[k] for i, k in enumerate(keys)]
        return [replace(r, x=x) for r, x in zip(rows, states)], self.layers


def _label_weight(farcer: Farcer, rows: list) -> torch.Tensor:
    """The weight `packed_loss` divides the rows' label loss by: their answers' token weights summed."""
    ids = torch.cat([r.label_ids for r in rows]).to(farcer.device)
    return farcer.token_weights[ids].sum() if farcer.token_weights is not None else torch.tensor(
        float(len(ids)), device=farcer.device)


def selection_key(report: Mapping, tolerance: float) -> tuple[bool, float]:
    """What validation result is best: with face views, first whether random-emotion faces keep within
    `tolerance` of text only, then the pooled weighted F1 (without face views, that alone)."""
    views = report.get("views", {})
    keeps_text = "random" not in views or views["random"]["weighted_f1"] >= views["text"]["weighted_f1"] - tolerance
    return keeps_text, report["weighted_f1"]


def fit(
    farcer: Farcer, processor: FarcerProcessor, train: Split, val: Split, pool: list[Example],
    cfg: TrainConfig, on_best: Callable[[dict, int], None], state_path: Path | None = None, resume: bool = False,
) -> dict:
    """AdamW + warmup/cosine over packed rows (`accumulate` batches per step, bf16 autocast optional);
    validate every-turn after each epoch or every `val_every` steps and keep the best by `selection_key`
    (`on_best(report, epoch)`). Stops at `max_steps` or once `max_minutes` is spent. With `state_path`
    the run saves its state at each validation, and `resume` continues from the saved state."""
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    accelerator = build_accelerator(bf16=cfg.bf16, gradient_accumulation_steps=cfg.accumulate,
                                    cpu=farcer.device.type == "cpu")
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(farcer)
    samples = make_samples(train.dialogues, cfg, cfg.seed)
    counts = Counter(train.dialogues[s.dialogue].turns[s.start + t].label for s in samples for t in s.targets)
    prompts = training_prompts(pool, cfg.prompts, cfg.shots, cfg.seed) if cfg.shots else [[]]
    val_shots = sample_shots(pool, cfg.shots, cfg.seed)
    val_past = {"mixed": "predicted"}.get(cfg.past_labels, cfg.past_labels)
    # a head (not a core) that does not read its own past labels gets a label prior correction; a face
    # slot trained alone keeps the text head's, so that text-only labels stay the text head's
    chooses_bias = cfg.text_weight == 0 and val_past in ("none", "gold") and not cfg.projector_only
    batches_per_epoch = math.ceil(len(samples) / cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * math.ceil(batches_per_epoch / cfg.accumulate)
    params = [p for p in farcer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(max(1, int(cfg.warmup * total)), total))
    packed_loss, opt = prepare(accelerator, _PackedLoss(farcer), opt)
    # text_weight trains every layer; rows change between epochs when shots rotate or past labels mix
    frozen = FrozenStates(farcer, reusable=len(prompts) == 1 and cfg.past_labels in PAST_LABELS)
    farcer.set_token_weights(processor.token_weights(counts))  # on the device the accelerator chose
    state = RunState(best={"weighted_f1": -1.0}, curve=[])
    if resume:
        if state_path is None or not state_path.is_file():
            raise InputError(f"--resume needs the state a run saved at {state_path}; there is none")
        state = load_state(state_path, farcer, opt, sched, rng)
        print(f"resumed at step {state.step} of {total} (epoch {state.epoch}, batch {state.position})", flush=True)
    # `spent` is the run's training time in all; the time budget counts this process only, so that a
    # run stopped by its budget can be resumed with a new one.
    started, process_started, sums = time.time() - state.seconds, time.time(), Counter()
    bar = tqdm(total=total, initial=state.step, desc="farcer", unit="step", disable=not accelerator.is_main_process)

    def spent() -> float:
        return time.time() - started

    def out_of_time() -> bool:
        return state.step >= total or (cfg.max_minutes > 0 and time.time() - process_started >= 60 * cfg.max_minutes)

    def validate() -> None:
        farcer.eval()
        t = time.time()

        def shard(rows: Sequence[int]) -> Split:
            return Split([val.dialogues[i] for i in rows], [val.faces[i] for i in rows])

        if chooses_bias:  # the weights are judged with the label bias that suits them best on validation
            farcer.set_label_bias(())
            scores = map_shards(lambda rows: label_scores(farcer, processor, shard(rows), val_shots, val_past),
                                range(len(val.dialogues)), accelerator)
            prior, predicted = best_label_bias(scores, val, processor.labels, counts)
            farcer.set_label_bias(prior["bias"])  # what on_best saves with the weights
        else:
            predicted = map_shards(lambda rows: label_split(farcer, processor, shard(rows), val_shots, val_past),
                                   range(len(val.dialogues)), accelerator)
        report = reports(val, predicted, processor.labels)
        if chooses_bias:
            report["label_bias"] = prior
        # How often each label is predicted shows a collapse onto a few classes before the F1 does.
        predicted_counts = Counter(label for labels in predicted for label in labels)
        n = max(sums["n"], 1)
        row = {"epoch": state.epoch, "steps": state.step, **{f"train_{k}_loss": sums[k] / n for k in sums if k != "n"},
               "val_weighted_f1": report["weighted_f1"], "val_accuracy": report["accuracy"],
               **({"val_views": {k: round(v["weighted_f1"], 4) for k, v in report["views"].items()}}
                  if "views" in report else {}),
               **({"label_bias_scale": prior["scale"]} if chooses_bias else {}),
               "val_predicted": {label: predicted_counts[label] for label in processor.labels},
               "minutes": round(spent() / 60, 1), "val_seconds": round(time.time() - t, 1)}
        sums.clear()
        state.curve.append(row)
        improved = "step" not in state.best or (
            selection_key(report, cfg.face_tolerance) > selection_key(state.best, cfg.face_tolerance))
        if improved:
            state.best = {**report, "epoch": state.epoch, "step": state.step}
            on_best(report, state.epoch)
        if accelerator.is_main_process:
            bar.write(f"validation: {row}" + (" *" if improved else ""))
        farcer.train()

    farcer.train()
    while state.epoch <= cfg.epochs and not out_of_time():
        if state.order is None:
            state.order, state.position = rng.sample(range(len(samples)), len(samples)), 0
        while state.position < len(state.order) and not out_of_time():
            opt.zero_grad(set_to_none=True)
            for micro in range(cfg.accumulate):
                chunk = state.order[state.position : state.position + cfg.batch_size]
                if not chunk:
                    break
                state.position += len(chunk)
                rows, keys, text_only = [], [], True
                # every process draws every row (the same rng in each) and packs only its share
                start, stop = shard_bounds(len(chunk), accelerator)
                for i, (k, s) in enumerate((k, samples[k]) for k in chunk):
                    d = train.dialogues[s.dialogue]
                    past = cfg.past_labels if cfg.past_labels in PAST_LABELS else rng.choice(("none", "gold"))
                    faces = drop_faces(train.faces[s.dialogue][s.start : s.end], cfg, rng)
                    shots = rng.choice(prompts)
                    if start <= i < stop:
                        rows.append(processor.pack(farcer, d.turns[s.start : s.end], faces, s.targets, shots, past))
                        keys.append(k)
                        text_only &= all(f is None for f in faces)
                scale = 1.0
                if distributed(accelerator):
                    # a process without a row runs the chunk's first one with weight 0 (DDP needs every
                    # process in each backward); the others weigh their label loss by their share of
                    # the chunk's label weight, so DDP's mean is the whole chunk's label loss
                    if not rows:
                        s = samples[chunk[0]]
                        faces = train.faces[s.dialogue][s.start : s.end]
                        rows = [processor.pack(farcer, train.dialogues[s.dialogue].turns[s.start : s.end],
                                               faces, s.targets, [], "none")]
                        keys, text_only = [None], all(f is None for f in faces)  # None: not kept
                    own = _label_weight(farcer, rows) if stop > start else torch.zeros((), device=accelerator.device)
                    scale = accelerator.num_processes * own / accelerator.reduce(own.clone(), "sum")
                last = micro == cfg.accumulate - 1 or state.position >= len(state.order)
                with nullcontext() if last else accelerator.no_sync(packed_loss):  # sync once per step
                    # accelerate autocasts on the GPU; on a CPU (avx512_bf16) the loop does it
                    with torch.autocast(farcer.device.type, dtype=torch.bfloat16,
                                        enabled=cfg.bf16 and accelerator.mixed_precision == "no"):
                        entering, start_layer = frozen.rows(farcer, keys, rows, text_only)
                        loss, parts = packed_loss(entering, cfg.text_weight, start_layer)
                    if loss.requires_grad:  # not when only the projector trains and no row has a face
                        accelerator.backward(loss * scale)  # divided by cfg.accumulate
                if distributed(accelerator):  # the chunk's loss parts, as one process reports them
                    mine = torch.tensor([v * float(scale) for v in parts.values()], device=accelerator.device)
                    parts = dict(zip(parts, accelerator.reduce(mine, "mean").tolist()))
                sums.update({**parts, "n": 1})
            accelerator.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            state.step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
            if cfg.val_every and state.step % cfg.val_every == 0:
                validate()
                if state_path is not None and accelerator.is_main_process:
                    state.seconds = spent()
                    save_state(state_path, state, farcer, opt, sched, rng)
        if state.position >= len(state.order):
            if not cfg.val_every:
                validate()
            state.epoch, state.order = state.epoch + 1, None
            if state_path is not None and accelerator.is_main_process:
                state.seconds = spent()
                save_state(state_path, state, farcer, opt, sched, rng)
    if not state.curve or state.curve[-1]["steps"] != state.step:
        validate()  # the budget ran out between validations: judge the last weights too
    if state_path is not None and accelerator.is_main_process:
        state.seconds = spent()
        save_state(state_path, state, farcer, opt, sched, rng)
    bar.close()
    return {"best_epoch": state.best["epoch"], "best_step": state.best["step"], "val": state.best,
            "curve": state.curve, "label_counts": dict(counts), "steps": state.step, "planned_steps": total,
            "train_minutes": spent() / 60}


def trains_core(args: argparse.Namespace) -> bool:
    return args.core == "new" or args.train_core


def add_train_args(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="meld")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--core", default=None,
                        help="a packaged LM (default: the --init head's, else smollm2), a farcer-core checkpoint folder or "
                        "store version, a Hugging Face name, or `new` to train a small Llama + tokenizer here (text only)")
    parser.add_argument("--train-core", action="store_true",
                        help="keep training a core made here (text only), e.g. from a finished --core new run")
    parser.add_argument("--faces", type=Path, default=None,
                        help="FER2013-style image folder whose faces are paired with the turns (--face-mix)")
    parser.add_argument("--face-mix", type=mix_arg("--face-mix"), default=d.face_mix,
                        help="shares (matched, neutral, random) of the faces paired with corpus turns: of the turn's "
                        "emotion, neutral, or of a random emotion (default %(default)s; 1,0,0 leaks the label)")
    parser.add_argument("--neutral-lines", type=int, default=d.neutral_lines,
                        help="also train on N dialogues of emotion-neutral lines beside faces that decide the label, "
                        "and validate on 60 such dialogues (needs --faces)")
    parser.add_argument("--projector-only", action="store_true",
                        help="train only the face slot (projector) on top of the --init head, whose adapters and label "
                        "bias stay as they are: its text-only labels do not change (needs --faces and --init)")
    parser.add_argument("--face-encoder", default=None,
                        help="a face-encoder checkpoint folder or store version (default: the shipped one), or a "
                        "Hugging Face ViT id or folder (the paper: trpakov/vit-face-expression) whose CLS vector is read")
    parser.add_argument("--out", type=Path, default=None,
                        help="a new checkpoint folder (default: a new version in the model store)")
    parser.add_argument("--variant", choices=VARIANTS, default=None, help=f"default: the --init head's, else {d.variant}")
    parser.add_argument("--shots", type=int, choices=SHOT_COUNTS, default=d.shots)
    parser.add_argument("--past-labels", choices=(*PAST_LABELS, "mixed"), default=d.past_labels,
                        help="training shows gold past labels for gold/predicted; mixed: none or gold per row")
    parser.add_argument("--targets", choices=("every", "last"), default=None,
                        help="default: every for meld (whole dialogues), last for others (5-21 turn sub-dialogues)")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--max-steps", type=int, default=d.max_steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--text-weight", type=float, default=None, help="LM loss weight (default 1 for --core new, else 0)")
    parser.add_argument("--face-drop-turn", type=float, default=d.face_drop_turn,
                        help="chance a training turn's face is left out (the app meets turns without a face)")
    parser.add_argument("--face-drop-dialogue", type=float, default=None,
                        help=f"chance all faces of a training row are left out (default {d.face_drop_dialogue}; 0 "
                        "with --projector-only, where a row without faces teaches nothing)")
    parser.add_argument("--face-tolerance", type=float, default=d.face_tolerance,
                        help="choose among the validated steps whose random-emotion-face view is at most this much "
                        "below text only (all steps if none is); default %(default)s")
    parser.add_argument("--val-dialogues", type=int, default=d.val_dialogues)
    parser.add_argument("--val-every", type=int, default=d.val_every,
                        help="validate every this many optimiser steps (default: after each epoch)")
    parser.add_argument("--max-turns", type=int, default=d.max_turns,
                        help="longest piece of a dialogue in one training row (every) or sub-dialogue (last)")
    parser.add_argument("--accumulate", type=int, default=d.accumulate, help="batches per optimiser step")
    parser.add_argument("--max-minutes", type=float, default=d.max_minutes,
                        help="time budget of this invocation: stop and validate once it is spent (0: none); "
                        "a run stopped early can continue with --resume")
    # The head's shape defaults to the --init head's (head_defaults), else to TrainConfig's.
    parser.add_argument("--lora-r", type=int, default=None, help=f"default: the --init head's, else {d.lora_r}")
    parser.add_argument("--lora-alpha", type=int, default=None, help=f"default: the --init head's, else {d.lora_alpha}")
    parser.add_argument("--lora-targets", default=None,
                        help="comma-separated module names (default: the --init head's, else the paper's "
                        f"{','.join(d.lora_targets)})")
    parser.add_argument("--lora-layers", type=int, default=None,
                        help="adapters on the core's last N decoder layers only (0: all, the paper; default: the "
                        "--init head's, else 0). The layers below then never train, so text-only rows run them once, "
                        "without gradient")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute the core LM's activations in backward (memory for 7-8B cores)")
    parser.add_argument("--init", default=None,
                        help="start from this FARCER head (folder, version id, built-in name or `active`): its "
                        "adapters and projector; the run must build the same head (core, variant, LoRA settings, "
                        "face encoder)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the unfinished run in --out from the state it saved beside it (OUT.state.pt)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--vocab-size", type=int, default=CoreConfig.vocab_size)
    parser.add_argument("--hidden-size", type=int, default=CoreConfig.hidden_size)
    parser.add_argument("--layers", type=int, default=CoreConfig.num_hidden_layers)
    parser.add_argument("--threads", type=int, default=1)
    add_corrections_args(parser)


def _command(action: str, args: argparse.Namespace, skip: tuple[str, ...] = ()) -> str:
    flags = [f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
             for k, v in vars(args).items() if k not in ("action", "task", *skip) and v is not None and v is not False]
    return f"python -m training {action} farcer " + " ".join(f.replace(" True", "") for f in flags)


def head_defaults(args: argparse.Namespace) -> None:
    """Fill the head-shape options not given (core, variant, LoRA settings) from the --init head, so that
    continuing a head needs only --init; without --init, from TrainConfig (core: smollm2)."""
    d = TrainConfig()
    shape = {"core": "smollm2", "variant": d.variant, "lora_r": d.lora_r, "lora_alpha": d.lora_alpha,
             "lora_targets": ",".join(d.lora_targets), "lora_layers": d.lora_layers}
    if args.init is not None:
        init = find_checkpoint(args.init, MODEL)
        model = init.config["model"]
        shape.update(core=model["lm"], variant=init.config["variant"], lora_r=model["lora_r"],
                     lora_alpha=model["lora_alpha"], lora_targets=",".join(model["lora_targets"]),
                     lora_layers=model.get("lora_layers", 0))
    for name, value in shape.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    head_defaults(args)
    command = _command("train", args)
    if trains_core(args) and (args.faces or args.variant != "base"):
        raise InputError("--core new / --train-core train the text-only core LM; drop --faces/--variant and train "
                         "the projector after")
    targets = args.targets or ("every" if args.corpus == "meld" else "last")
    cfg = TrainConfig(variant=args.variant, shots=args.shots, past_labels=args.past_labels, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, targets=targets, max_steps=args.max_steps,
                      text_weight=args.text_weight if args.text_weight is not None else float(trains_core(args)),
                      val_dialogues=args.val_dialogues, seed=args.seed, face_drop_turn=args.face_drop_turn,
                      face_drop_dialogue=args.face_drop_dialogue if args.face_drop_dialogue is not None else
                      0.0 if args.projector_only else TrainConfig.face_drop_dialogue, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
                      lora_targets=tuple(t for t in args.lora_targets.split(",") if t), lora_layers=args.lora_layers,
                      accumulate=args.accumulate,
                      max_minutes=args.max_minutes, val_every=args.val_every, bf16=args.bf16,
                      max_turns=args.max_turns, gradient_checkpointing=args.gradient_checkpointing,
                      face_mix=args.face_mix, neutral_lines=args.neutral_lines, projector_only=args.projector_only,
                      face_tolerance=args.face_tolerance)
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.accumulate < 1 or cfg.lr <= 0:
        raise InputError("--epochs, --batch-size and --accumulate must be at least 1 and --lr positive")
    if args.resume and args.out is None:
        raise InputError("--resume continues a run in its --out folder; name the folder the run was writing to")
    if not (0 <= cfg.face_drop_turn <= 1 and 0 <= cfg.face_drop_dialogue <= 1):
        raise InputError("--face-drop-turn and --face-drop-dialogue are chances between 0 and 1")
    if (cfg.neutral_lines or cfg.projector_only) and args.faces is None:
        raise InputError("--neutral-lines and --projector-only train with faces: give --faces (a FER2013-style folder)")
    if cfg.projector_only and (args.init is None or cfg.variant != "lora"):
        raise InputError("--projector-only trains the face slot of an existing LoRA head: give --init HEAD")
    core = None if args.core == "new" else resolve_core(args.core)
    if args.train_core and not isinstance(core, Checkpoint):
        raise InputError(f"--train-core continues a farcer-core checkpoint; {args.core} is not one")
    encoder = resolve_face_encoder(args.face_encoder)
    store = open_model_store(get_settings())
    components = {}
    if not trains_core(args):
        components = {"core": component(core, store), "face_encoder": component(encoder, store)}
    labels = corpus_labels(args.corpus)
    train_split = load_split(args.corpus, args.data, "train")
    if args.faces is not None:
        train_split.faces = paired_faces(train_split.dialogues, args.faces, "train", encoder, cfg.seed,
                                         PairMix(*cfg.face_mix))
    if cfg.neutral_lines:
        lines = neutral_line_split(args.faces, labels, "train", cfg.neutral_lines, encoder, cfg.seed)
        train_split = Split(train_split.dialogues + lines.dialogues, train_split.faces + lines.faces)
    val = load_split(args.corpus, args.data, "validation", cfg.val_dialogues)
    if args.faces is not None:
        val = validation_views(val.dialogues, args.faces, labels, 60 if cfg.neutral_lines else 0, encoder, cfg.seed)
    corrections = None
    if args.corrections:
        corrections = load_corrections(args.corrections, labels, cfg.seed, args.corrections_weight)
        # A head reads the corrections' own face crops, with or without --faces for the corpus.
        face_encoder = None if trains_core(args) else encoder
        extra = corrected_train(corrections)
        train_split = Split(train_split.dialogues + extra, train_split.faces + own_faces(extra, face_encoder))
        if corrections.validation:  # reported apart: the corpus's dialogues (or views), then the corrections
            n, held = len(val.dialogues), corrections.validation
            val = Split(val.dialogues + held, val.faces + own_faces(held, face_encoder),
                        views={**(val.views or {"corpus": range(n)}), "corrections": range(n, n + len(held))})
    # A head's projector reads its face encoder's vectors; a core's is never trained.
    if trains_core(args):
        image_dim = FarcerConfig.image_dim
    elif isinstance(encoder, str):
        image_dim = vit_feature_dim(encoder)
    else:
        image_dim = face_encoder_config(encoder).feature_dim
    torch.manual_seed(cfg.seed)  # the adapters' and projector's initial weights follow the seed too
    farcer, processor, core_config = build_model(args, cfg, labels, train_split, core, image_dim)
    init = None if args.init is None else start_from(farcer, args.init, labels, components, cfg.variant)
    if cfg.projector_only:  # the head's adapters and label bias stay; only the face slot learns
        for name, param in farcer.lm.named_parameters():
            param.requires_grad_(False)
        farcer.set_label_bias(init.config["model"].get("label_bias") or ())
    pool = shot_pool(train_split.dialogues, cfg.seed)
    started = time.time()
    data = {"corpus": args.corpus, "data": str(args.data), "faces": str(args.faces) if args.faces else None,
            "command": command, "train": asdict(cfg)}
    if corrections is not None:
        data["corrections"] = corrections.card_data()
    if init is not None:
        data["init"] = {"version": init.version, "val": init.metrics.get("val")}
        if cfg.projector_only and "label_bias" in init.data:
            data["label_bias"] = init.data["label_bias"]  # kept, as chosen for the init head
    if args.train_core:
        data["continued_from"] = [*core.data.get("continued_from", []),
                                  {"command": core.data["command"], "curve": core.metrics["curve"],
                                   "val": core.metrics["val"]}]
    manifest = {"model": CORE if trains_core(args) else MODEL, "labels": list(labels),
                "components": components, "data": data, "metrics": {"results": []}}

    data["finished"] = False  # an interrupted run leaves its best checkpoint so far, marked unfinished
    if args.resume:  # the best weights so far and their report are in the unfinished checkpoint
        previous = read_checkpoint(args.out)
        manifest["config"] = previous.config
        manifest["metrics"].update({k: previous.metrics[k] for k in ("best_epoch", "val") if k in previous.metrics})
        data["resumed"] = True
    state_path = None if args.out is None else args.out.with_name(args.out.name + ".state.pt")
    with checkpoint_output(args.out, manifest["model"], resume=args.resume) as pending:

        def on_best(report: dict, epoch: int) -> None:
            if trains_core(args):
                save_core(farcer.lm, processor.tokenizer, pending.folder)
            else:
                save_trainable(farcer, pending.folder / WEIGHTS)
            # asdict after training starts: apply_lora records its settings in the config. "lm" is the
            # core as the command named it (its version is the "core" component).
            config = {"model": {**asdict(farcer.config), "lm": str(args.core)}, "variant": cfg.variant}
            if core_config is not None:
                config["core_config"] = core_config
            manifest["config"] = config
            minutes = (time.time() - started) / 60
            manifest["metrics"].update(best_epoch=epoch, val=report, train_minutes=minutes)
            write(pending.folder, manifest)

        result = fit(farcer, processor, train_split, val, pool, cfg, on_best, state_path, args.resume)
        # A run its time budget stopped early stays resumable (--resume with a new --max-minutes).
        finished = result["steps"] >= result["planned_steps"]
        data.update(label_counts=result["label_counts"], finished=finished, steps=result["steps"],
                    planned_steps=result["planned_steps"])
        if "label_bias" in result["val"]:  # chosen with the selected weights (and saved in their config)
            data["label_bias"] = result["val"]["label_bias"]
        manifest["metrics"].update(curve=result["curve"], train_minutes=result["train_minutes"],
                                   best_step=result["best_step"])
        write(pending.folder, manifest, card=True)
    print(f"best epoch {result['best_epoch']}: val weighted F1 {result['val']['weighted_f1']:.4f}; checkpoint "
          f"{pending.checkpoint.version} in {pending.checkpoint.path}")
    return 0


def selection(metrics: Mapping, cfg: Mapping) -> str:
    """How the checkpoint was chosen, and (for runs that record them) the adapters and step settings."""
    if "best_step" not in metrics:
        return (f"epoch selected on validation weighted F1 only: epoch {metrics['best_epoch']} of "
                f"{len(metrics['curve'])}")
    lora = (f"LoRA r{cfg['lora_r']}/a{cfg['lora_alpha']} on {','.join(cfg['lora_targets'])}; "
            if cfg["variant"] == "lora" else "")
    rule = "weighted F1 only"
    if "face_tolerance" in cfg and "random" in metrics.get("val", {}).get("views", {}):
        rule = (f"weighted F1 on all views pooled, among the steps whose random-face view is within "
                f"{cfg['face_tolerance']} of text only if any is")
    return (f"{lora}{cfg['accumulate']} batch(es) per step{', bf16 autocast' if cfg['bf16'] else ''}; weights "
            f"selected on validation {rule}: step {metrics['best_step']} of {metrics['curve'][-1]['steps']} "
            f"(validated {len(metrics['curve'])} times)")


def reselected_line(data: Mapping) -> str:
    """The card's account of a step chosen again after the run, by a later selection rule."""
    again = data.get("reselected")
    if not again:
        return ""
    steps = "; ".join(f"step {step}: " + ", ".join(f"{k}: {v:.4f}" for k, v in by_scale.items())
                      for step, by_scale in again["steps"].items())
    return (f"\nThe step was chosen again after the run ({again['rule']}; `{again['command']}`), by weighted F1 per "
            f"label-bias scale: {steps}.\n")


def bias_line(data: Mapping) -> str:
    """The card's account of the label prior correction, when one was chosen."""
    chosen = data.get("label_bias")
    if not chosen:
        return ""
    command = f" (`{reproducible(chosen['command'])}`)" if "command" in chosen else " (chosen by `train`)"
    return (f"\nLabel prior correction: scale {chosen['scale']} x log of the training label distribution is added to "
            f"the label scores, the scale with the best weighted F1 on {chosen['n']} validation turns{command}; by "
            f"scale: {', '.join(f'{k}: {v:.4f}' for k, v in chosen['validation'].items())}. It offsets the balanced "
            "label loss, which trains the head to over-predict rare labels (logit adjustment).\n")


def face_weight_line(data: Mapping) -> str:
    """The card's account of the face weight, when one was chosen."""
    chosen = data.get("face_weight")
    if not chosen:
        return ""
    by_weight = "; ".join(f"{w}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items())
                          for w, r in chosen["validation"].items())
    return (f"\nFace weight {chosen['weight']}: a turn with a face is labelled by text + {chosen['weight']} x "
            "(with faces - text), where text is the same turn's label scores without its face (a second pass), so "
            f"a face moves the labels only that share of the way. Chosen on {chosen['n']} validation turns "
            f"(`{reproducible(chosen['command'])}`): the best weighted F1 on all views pooled among the weights whose "
            f"random-face view is within {chosen['tolerance']} of text only; weighted F1 by weight: {by_weight}.\n")


def core_line(manifest: Mapping) -> str:
    """For a head on a packaged core: where the frozen core comes from (package, version, file hashes)."""
    component = manifest.get("components", {}).get("core", {})
    if component.get("kind") != "package":
        return ""
    packaged = packaged_for(component)
    files = ", ".join(f"`{name}` sha256 `{sha}`" for name, sha in component["files"].items())
    return (f"\nCore: {packaged.upstream} ({packaged.licence}), from the package `{packaged.requirement}` "
            f"(installed with --no-deps; {files}), converted once into the local model cache and checked at load.\n")


def faces_line(data: Mapping) -> str:
    """The card's account of the faces a head was trained with (MELD ships no frames here)."""
    cfg = data["train"]
    matched, neutral, random_ = cfg.get("face_mix", (1.0, 0.0, 0.0))
    pool = ("every second image of the folder's held-out val split for training, the others for validation, test "
            "for test" if "face_mix" in cfg else "train faces for train turns, val for validation, test for test")
    lines = cfg.get("neutral_lines", 0)
    choice = "selection on all pooled"
    if "face_tolerance" in cfg:
        choice = (f"selection: the best weighted F1 on all pooled among the steps whose random-face view is within "
                  f"{cfg['face_tolerance']} of text only, or on all pooled if none is")
    return (
        f"Faces: `{data['faces']}` paired with the corpus turns (seeded), each turn's face of its own emotion with "
        f"chance {matched}, neutral with chance {neutral}, of a random emotion with chance {random_} ({pool}), encoded "
        "with the face encoder. MELD frames are not available here; label-matched faces alone would carry the gold "
        "emotion more reliably than any real face, and a head trained on them reads the face and ignores the words "
        "(issue 12), so most faces say nothing or disagree with the words."
        + (f" Also {lines} dialogues of emotion-neutral lines, each beside a face that gives the turn its label: "
           "where the words say nothing, the face decides." if lines else "")
        + (f" Only the projector trained, on top of the --init head `{data.get('init', {}).get('version')}`: its "
           "adapters and label bias are that head's, so its text-only labels are unchanged."
           if cfg.get("projector_only") else "")
        + f" Faces left out at random in training (so turns without one are labelled too): a turn's with chance "
        f"{cfg.get('face_drop_turn', 0.0)}, all of a row's with chance {cfg.get('face_drop_dialogue', 0.0)}."
        + (f" Validation views (none leaks the label; {choice}): text only, a neutral face on every turn, a face "
           "of a random emotion" + (", and 60 dialogues of held-out neutral lines with held-out faces."
                                    if lines else ".") if "face_mix" in cfg else "")
    )


def model_card(manifest: Mapping) -> str:
    """MODEL_CARD.md from a farcer or farcer-core manifest (re-rendered when a result is recorded)."""
    config, data, metrics = manifest["config"], manifest["data"], manifest["metrics"]
    core_trained = manifest["model"] == CORE
    val, cfg = metrics["val"], data["train"]
    what = (
        f"the offline FARCER core LM: a Llama trained from scratch here ({config['core_config']}) with its own "
        "byte-level BPE tokenizer and chat template, on the training transcripts in FARCER's prompt format "
        "(LM loss on the dialogue lines + balanced-weighted label loss); no image slots were trained"
        if core_trained
        else f"a {cfg['variant']} FARCER head (projector{' + LoRA adapters' if cfg['variant'] == 'lora' else ''} "
        f"only; the core LM `{config['model']['lm']}` is frozen and not stored here)"
    )
    faces = faces_line(data) if data["faces"] else "Faces: none (text only)."
    earlier = "".join(f"{reproducible(run['command'])}\n" for run in data.get("continued_from", []))
    tests = "\n".join(f"- {r['name']}: weighted F1 {r['weighted_f1']:.4f} (n={r['n']})\n\n  ```\n  {r['command']}\n  ```"
                      for r in metrics.get("results", []))
    return f"""# FARCER {'core LM' if core_trained else cfg['variant'] + ' head'}

What: {what}. Labels: {', '.join(manifest['labels'])}. Corpus `{data['corpus']}`.
{core_line(manifest)}
{faces}

## Training

```
{earlier}{reproducible(data['command'])}
```

Targets `{cfg['targets']}`, {cfg['shots']}-shot prompts ({cfg['prompts']} seeded variants), past labels
`{cfg['past_labels']}` ({PAST_NOTE[cfg['past_labels']]}), AdamW + warmup/cosine, batch {cfg['batch_size']},
lr {cfg['lr']}; {selection(metrics, cfg)},
{metrics['train_minutes']:.1f} min on CPU.

Validation (every utterance, selected epoch): weighted F1 {val['weighted_f1']:.4f}, accuracy {val['accuracy']:.4f},
n={val['n']}.
{reselected_line(data)}{bias_line(data)}{face_weight_line(data)}{card_section(data)}{views_lines(val)}
## Results

{tests or 'None recorded yet: run `python -m training evaluate farcer ... --record NAME`.'}
"""


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", default=None,
                       help="a farcer or farcer-core checkpoint folder or store version (default: the shipped farcer)")
    which.add_argument("--core", default=None,
                       help="evaluate a core LM with no training at all (a packaged LM such as smollm2, or a hub "
                       "name): zero-/few-shot label scoring, text only")
    parser.add_argument("--calibrate", action="store_true",
                        help="contextual calibration: divide out the label prior measured on content-free lines "
                        f"({', '.join(repr(t) for t in CONTENT_FREE)}); needs --past-labels none")
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="meld")
    parser.add_argument("--data", type=Path, required=True)
    faces = parser.add_mutually_exclusive_group()
    faces.add_argument("--faces", type=Path, default=None,
                       help="image folder for label-matched faces (leaks the label: a pipeline check only); "
                       "omit for text only, or for the corpus CSV's own `face` column")
    faces.add_argument("--neutral-lines", type=int, default=None,
                       help="evaluate on N dialogues of emotion-neutral lines (held apart by split) instead of the "
                       "corpus, each turn beside a face from --face-corpus's pool for the split and labelled with the "
                       "face's emotion: the view where the face alone decides")
    faces.add_argument("--paired-faces", choices=sorted(PAIRED_VIEWS), default=None,
                       help="give every labelled turn a face from --face-corpus's same split (test faces for test; "
                       "FER2013 val and test are held out from the face encoder's training): 'neutral' (a "
                       "neutral face beside the words), 'random' (an emotion unrelated to the label) or "
                       "'matched' (the turn's own emotion: leaks the label, a pipeline check only)")
    parser.add_argument("--face-corpus", choices=FACE_CORPORA, default=None)
    parser.add_argument("--face-data", type=Path, default=None, help="the --face-corpus folder")
    parser.add_argument("--face-encoder", default=None,
                        help="face-encoder folder or store version "
                        "(default: the one the checkpoint was trained with)")
    parser.add_argument("--split", choices=("train", "validation", "test"), default="test")
    parser.add_argument("--shots", type=int, choices=SHOT_COUNTS, default=None, help="default: as trained")
    parser.add_argument("--past-labels", choices=PAST_LABELS, default=None,
                        help="default: none if trained with none, else predicted; gold is an oracle")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="every",
                        help="last-turn also reports the last utterance of each dialogue (the paper's protocol)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N dialogues (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the few-shot prompt and of paired faces")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument("--record", default=None,
                        help="also list the result in the checkpoint (and its card) under this name")
    choose = parser.add_mutually_exclusive_group()
    choose.add_argument("--choose-label-bias", action="store_true",
                        help="choose the head's prior correction on this validation split (as `train` does after "
                        "training) and write it into the checkpoint folder, then report with it")
    choose.add_argument("--choose-face-weight", action="store_true",
                        help="choose how far faces may move a face-reading head's labels from its text-only ones, on "
                        "this validation split's views (text only, neutral and random-emotion faces from --face-data's "
                        "validation pool, 60 dialogues of neutral lines) by --face-tolerance, and write it into the "
                        "checkpoint folder, then report with it")
    parser.add_argument("--face-tolerance", type=float, default=TrainConfig.face_tolerance,
                        help="--choose-face-weight keeps the random-face view within this of text only (default "
                        "%(default)s)")


def evaluation_face_encoder(checkpoint: Checkpoint, ref: str | None, store: ModelStore) -> Checkpoint | str:
    """--face-encoder if given, else the one a head was trained with, else the shipped one."""
    if ref:
        return resolve_face_encoder(ref)
    kind = (checkpoint.components.get("face_encoder") or {}).get("kind")
    if kind == "checkpoint":
        return store.component(checkpoint, "face_encoder")
    if kind == "hub":
        return checkpoint.components["face_encoder"]["name"]
    return find_checkpoint(FACE_ENCODER_BUILTIN, FACE_ENCODER)


@dataclass(frozen=True)
class EvaluationFaces:
    """Where an evaluation's faces come from, and whether the model reads them."""

    source: str  # "none", "corpus" (the CSV's face column), "label-matched" (--faces), "views" or a PAIRED_VIEWS name
    description: str
    used: bool
    note: str | None = None  # why faces that exist are not used

    def report(self) -> dict:
        return {"faces": self.description, "faces_used": self.used, "faces_note": self.note,
                "paired_faces": self.source if self.source in PAIRED_VIEWS else None,
                "pipeline_check": self.source in PIPELINE_CHECKS or self.source == "label-matched"}


def evaluation_faces(args: argparse.Namespace, dialogues: Sequence[Dialogue], reads_faces: bool) -> EvaluationFaces:
    """The faces the flags and the corpus offer (--choose-face-weight's views, --faces, --paired-faces,
    --neutral-lines, else the turns' own)."""
    drawn = args.paired_faces is not None or args.neutral_lines or args.choose_face_weight
    if drawn and (args.face_corpus is None or args.face_data is None):
        raise InputError("--paired-faces, --neutral-lines and --choose-face-weight need --face-corpus and --face-data "
                         "(say fer2013 and its folder)")
    pool = f"{args.face_corpus} faces of the {args.split} pool ({FACE_POOLS[args.split][0]}) from {args.face_data}"
    if args.choose_face_weight:
        if args.paired_faces is not None or args.neutral_lines or args.faces is not None:
            raise InputError("--choose-face-weight draws its own validation views; drop --paired-faces, "
                             "--neutral-lines and --faces")
        if not reads_faces:
            raise InputError("--choose-face-weight weighs the faces of a head trained with them; this head reads none")
        return EvaluationFaces("views", "validation views: text only; a neutral face, a face of a random emotion "
                               f"({pool}); 60 dialogues of held-out neutral lines beside such faces", True)
    if args.neutral_lines:
        source, description = "neutral-lines", (
            f"neutral-lines: {args.neutral_lines} dialogues of emotion-neutral lines, each turn beside one of the {pool} "
            "and labelled with its emotion")
    elif args.paired_faces is not None:
        leak = " (leaks the label: a pipeline check only)" if args.paired_faces in PIPELINE_CHECKS else ""
        source, description = args.paired_faces, f"paired-{args.paired_faces}{leak}: {pool}"
    elif args.face_corpus is not None or args.face_data is not None:
        raise InputError("--face-corpus and --face-data go with --paired-faces or --neutral-lines")
    elif args.faces is not None:
        source, description = "label-matched", f"pseudo-paired by label from {args.faces} (a pipeline check only)"
    elif any(t.face is not None for d in dialogues for t in d.turns):
        source, description = "corpus", f"the {args.corpus} corpus's own face column"
    else:
        return EvaluationFaces("none", "none (text only)", False)
    note = None if reads_faces else (
        "the model was trained without faces (its projector never learned to read one), so it was evaluated "
        "text only, as the app serves it")
    return EvaluationFaces(source, description, reads_faces, note)


def turn_faces(
    dialogues: Sequence[Dialogue], faces: EvaluationFaces, args: argparse.Namespace, labels: Sequence[str],
    encoder: Checkpoint | None,
) -> list[list[np.ndarray | None]]:
    """Per dialogue, per turn: the face feature the model is shown (None: no image slot); `encoder` is
    needed only when the faces are used."""
    if not faces.used:
        return [[None] * len(d) for d in dialogues]
    if faces.source == "label-matched":
        return paired_faces(dialogues, args.faces, args.split, encoder, args.seed, LABEL_MATCHED)
    if faces.source in ("corpus", "neutral-lines"):
        return own_faces(dialogues, encoder)
    if faces.source == "neutral" and "neutral" not in labels:
        raise InputError("--paired-faces neutral needs a 'neutral' label")
    # Only the evaluated split's pool (FACE_POOLS): faces the face encoder never trained on.
    return paired_faces(dialogues, args.face_data, args.split, encoder, args.seed, PAIRED_VIEWS[faces.source])


def check_choosable(checkpoint: Checkpoint | None, args: argparse.Namespace, flag: str) -> Checkpoint:
    """The head folder an `evaluate --choose-...` run may rewrite: a trained head's folder (store versions
    never change), evaluated on validation data without --calibrate."""
    if checkpoint is None or args.split != "validation" or args.calibrate:
        raise InputError(f"{flag} chooses for a trained head on validation data: give --checkpoint and --split "
                         "validation, without --calibrate")
    if checkpoint.path.name == checkpoint.version:
        raise InputError(f"{checkpoint.path} is a model-store version, which never changes; copy the folder and "
                         "choose on the copy")
    return checkpoint


def rewrite_head(checkpoint: Checkpoint, model: Mapping, chosen: Mapping) -> Checkpoint:
    """Write a setting chosen on validation into the head folder: `model` into its model config and the
    account of the choice `chosen` into its data. The folder becomes a new version (the config changes);
    results recorded before were measured with the old setting, so they are dropped."""
    manifest = {k: v for k, v in checkpoint.manifest.items() if k not in ("format", "files", "version")}
    manifest["config"] = {**checkpoint.config, "model": {**checkpoint.config["model"], **model}}
    manifest["data"] = {**checkpoint.data, **chosen}
    manifest["metrics"] = {**checkpoint.metrics, "results": []}
    write(checkpoint.path, manifest, card=True)
    return read_checkpoint(checkpoint.path)


def evaluate(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    store = open_model_store(get_settings())
    if args.core:
        checkpoint = None
        lm, tokenizer = load_core(resolve_core(args.core), "cpu")
        processor = FarcerProcessor(tokenizer, corpus_labels(args.corpus))
        farcer = Farcer(lm, FarcerConfig(), processor.label_ids, processor.end_ids).eval()
        trained = {"shots": 0, "past_labels": "none", "seed": TrainConfig.seed}
    else:
        checkpoint = find_checkpoint(args.checkpoint or MODEL, MODEL, CORE)
        farcer, processor = load_farcer(checkpoint, store, "cpu")
        trained = checkpoint.data["train"]
    if tuple(corpus_labels(args.corpus)) != processor.labels:
        raise InputError(f"the checkpoint's labels ({', '.join(processor.labels)}) are not the {args.corpus} labels; "
                         "evaluate on the corpus it was trained for")
    shots_k = trained["shots"] if args.shots is None else args.shots
    past = args.past_labels or ("none" if trained["past_labels"] == "none" else "predicted")
    if args.calibrate and past != "none":
        raise InputError("--calibrate rescores each turn on its own; use it with --past-labels none")
    if args.record and checkpoint is None:
        raise InputError("--record lists a result in a checkpoint; an untrained --core has none (use --out only)")
    loaded = load_corpus(args.corpus, args.data)
    dialogues = split(loaded, args.split)
    if not dialogues:
        raise InputError(f"{args.data}: the {args.corpus} corpus has no {args.split!r} dialogues")
    dialogues = dialogues[: args.limit] if args.limit else dialogues
    if args.choose_label_bias or args.choose_face_weight:  # one at most: they are mutually exclusive
        flag = "--choose-label-bias" if args.choose_label_bias else "--choose-face-weight"
        checkpoint = check_choosable(checkpoint, args, flag)
    faces = evaluation_faces(args, dialogues, checkpoint is not None and trained_with_faces(checkpoint))
    if args.neutral_lines:  # instead of the corpus's dialogues
        dialogues = neutral_line_dialogues(face_pool(args.face_data, processor.labels, args.split), args.neutral_lines,
                                           args.split, np.random.default_rng(args.seed))
    if faces.note:
        print(f"notice: {faces.note}")
    encoder = evaluation_face_encoder(checkpoint, args.face_encoder, store) if faces.used else None
    if faces.source == "views":
        data = validation_views(dialogues, args.face_data, processor.labels, 60, encoder, args.seed)
    else:
        data = Split(dialogues, turn_faces(dialogues, faces, args, processor.labels, encoder))
    pool = shot_pool(split(loaded, "train"), trained["seed"])
    shots = sample_shots(pool, shots_k, args.seed)
    command = _command("evaluate", args, ("record",))
    if args.choose_label_bias:
        chosen, predicted = choose_label_bias(farcer, processor, data, shots, past, checkpoint.data["label_counts"])
        checkpoint = rewrite_head(checkpoint, {"label_bias": chosen["bias"]},
                                  {"label_bias": {**chosen, "command": command}})
        print(f"label bias: scale {chosen['scale']} (validation weighted F1 by scale: {chosen['validation']})")
    elif args.choose_face_weight:
        chosen, predicted = choose_face_weight(farcer, processor, data, shots, past, args.face_tolerance)
        checkpoint = rewrite_head(checkpoint, {"face_weight": chosen["weight"]},
                                  {"face_weight": {**chosen, "command": command}})
        print(f"face weight: {chosen['weight']} (validation by weight: {chosen['validation']})")
    else:
        if args.calibrate:  # dividing out the content-free prior is one more label bias
            base = torch.tensor(farcer.config.label_bias or [0.0] * farcer.n_labels)
            farcer.set_label_bias((base - content_free_bias(farcer, processor, shots).cpu()).tolist())
        predicted = label_split(farcer, processor, data, shots, past)
    report = reports(data, predicted, processor.labels, args.protocol)
    report.update(
        split=args.split, shots=shots_k, past_labels=past, oracle=past == "gold", calibrated=args.calibrate,
        **faces.report(), protocol=args.protocol,
        checkpoint=str(checkpoint.path) if checkpoint else f"untrained core {args.core}",
        version=checkpoint.version if checkpoint else None,
        command=command,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    oracle = " (ORACLE: gold past labels)" if past == "gold" else ""
    last = f"; last-turn weighted F1 {report['last_turn']['weighted_f1']:.4f}" if "last_turn" in report else ""
    print(f"{args.split}{oracle}: weighted F1 {report['weighted_f1']:.4f}, accuracy {report['accuracy']:.4f}, "
          f"n={report['n']}{last}")
    if args.record:
        entry = {"name": args.record + oracle, "weighted_f1": report["weighted_f1"], "n": report["n"],
                 "command": report["command"]}
        results = [r for r in checkpoint.metrics.get("results", []) if r["name"] != entry["name"]] + [entry]
        if "last_turn" in report:
            results = [r for r in results if r["name"] != entry["name"] + ", last turn"] + [
                {**entry, "name": entry["name"] + ", last turn", "weighted_f1": report["last_turn"]["weighted_f1"],
                 "n": report["last_turn"]["n"]}]
        metrics = {**checkpoint.metrics, "results": results}
        card = model_card({**checkpoint.manifest, "metrics": metrics})
        update_metrics(checkpoint, {"results": results}, card=card)
    return 0
