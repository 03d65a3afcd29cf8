"""Pseudo-pairs: speech (or faces) from one corpus beside the transcripts of another.

No corpus here has speech and text of the same utterances, so the cross-modal expert and the gate
are trained on dialogues whose speech vector for a turn is a clip from a speech corpus. If every
clip had the turn's own emotion (label-matched), speech would carry the label more reliably than
in any real conversation and the gate would learn to read speech alone (issue 12). A `PairMix`
therefore draws, per turn, a clip of the turn's emotion, a neutral clip (flat voice, emotional
words) or a clip of a random emotion (voice and words disagree). Speech is also dropped at random
so the gate learns to do without. Faces for FARCER are paired the same way (`pair_images`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np


@dataclass
class Stage2Dialogue:
    """One dialogue as stage 2 reads it: per-turn embeddings, presence flags and class ids."""

    id: str
    text: np.ndarray  # [T, Dt] float32, zero rows where text is absent
    text_present: np.ndarray  # [T] bool
    speech: np.ndarray  # [T, Ds] float32, zero rows where speech is absent
    speech_present: np.ndarray  # [T] bool
    labels: np.ndarray  # [T] int64 class ids, -1 for unlabelled turns

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class PairMix:
    """Probabilities of a turn's clip being of its emotion, neutral, or of a random emotion."""

    matched: float = 1.0
    neutral: float = 0.0
    random: float = 0.0

    def __post_init__(self) -> None:
        shares = (self.matched, self.neutral, self.random)
        if min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-6:
            raise ValueError(f"a pair mix needs three shares >= 0 summing to 1, got {shares}")


LABEL_MATCHED = PairMix()

# Evaluation views of a text corpus paired with another modality (issue 12): how a model behaves when
# the voice or face says nothing (neutral), disagrees (random) or, as a pipeline check only, leaks the
# label (matched).
PAIRED_VIEWS = {
    "neutral": PairMix(0.0, 1.0, 0.0),
    "random": PairMix(0.0, 0.0, 1.0),
    "matched": LABEL_MATCHED,
}
PIPELINE_CHECKS = frozenset({"matched"})  # views that leak the label: never a headline or a selection


def pair_images(
    turn_labels: Sequence[Sequence[str | None]],
    image_labels: Sequence[str],
    rng: np.random.Generator,
    mix: PairMix = LABEL_MATCHED,
    neutral: str = "neutral",
) -> list[list[int | None]]:
    """Per dialogue, per turn: the index into `image_labels` of the image a labelled turn is shown,
    drawn as `SpeechBank.pair` draws clips (the turn's own class, `neutral`, or any class the images
    have, chosen by `mix`; then a random image of it). Unlabelled turns, and turns whose drawn class
    has no image, get None."""
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(image_labels):
        by_class.setdefault(label, []).append(i)
    classes = sorted(by_class)
    chosen = []
    for labels in turn_labels:
        row: list[int | None] = []
        for label in labels:
            if label is None:
                row.append(None)
                continue
            kind = 0 if mix == LABEL_MATCHED else rng.choice(3, p=[mix.matched, mix.neutral, mix.random])
            label = label if kind == 0 else neutral if kind == 1 else classes[rng.integers(len(classes))]
            images = by_class.get(label)
            row.append(None if images is None else images[rng.integers(len(images))])
        chosen.append(row)
    return chosen


class SpeechBank:
    """Speech embeddings grouped by class id, to draw a clip of a given emotion from."""

    def __init__(self, dialogues: list[Stage2Dialogue]):
        by_class: dict[int, list[np.ndarray]] = {}
        for d in dialogues:
            for vector, present, label in zip(d.speech, d.speech_present, d.labels):
                if present and label >= 0:
                    by_class.setdefault(int(label), []).append(vector)
        self.by_class = {label: np.stack(vectors) for label, vectors in by_class.items()}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_class.values())

    def pair(
        self, dialogue: Stage2Dialogue, rng: np.random.Generator, mix: PairMix = LABEL_MATCHED, neutral: int = 0
    ) -> Stage2Dialogue:
        """`dialogue` with each labelled turn's speech replaced by a random clip whose class `mix`
        draws: the turn's own, `neutral`, or any class the bank has.

        Turns whose drawn class has no clip (and unlabelled turns) have no speech.
        """
        speech = np.zeros((len(dialogue), self.dim), dtype=np.float32)
        present = np.zeros(len(dialogue), dtype=bool)
        classes = sorted(self.by_class)
        for i, label in enumerate(dialogue.labels.tolist()):
            if label < 0:
                continue
            kind = 0 if mix == LABEL_MATCHED else rng.choice(3, p=[mix.matched, mix.neutral, mix.random])
            label = label if kind == 0 else neutral if kind == 1 else classes[rng.integers(len(classes))]
            clips = self.by_class.get(label)
            if clips is not None:
                speech[i] = clips[rng.integers(len(clips))]
                present[i] = True
        return replace(dialogue, speech=speech, speech_present=present)

    @property
    def dim(self) -> int:
        return next(iter(self.by_class.values())).shape[1]


def drop_speech(
    dialogue: Stage2Dialogue, turn_p: float, dialogue_p: float, rng: np.random.Generator
) -> Stage2Dialogue:
    """Remove speech from the whole dialogue with probability `dialogue_p`, else from each turn with
    probability `turn_p`; a turn without text always keeps its speech."""
    if not dialogue.speech_present.any() or not (turn_p or dialogue_p):
        return dialogue
    if rng.random() < dialogue_p:
        drop = np.ones(len(dialogue), dtype=bool)
    else:
        drop = rng.random(len(dialogue)) < turn_p
    drop &= dialogue.text_present
    if not drop.any():
        return dialogue
    present = dialogue.speech_present & ~drop
    return replace(
        dialogue,
        speech=np.where(present[:, None], dialogue.speech, 0.0).astype(np.float32),
        speech_present=present,
    )


def drop_modalities(dialogue: Stage2Dialogue, p: float, rng: np.random.Generator) -> Stage2Dialogue:
    """Test-time robustness: zero each modality of each turn with probability `p`.

    A turn never loses both: when both are drawn, one of them (at random) stays.
    """
    lose_text = dialogue.text_present & (rng.random(len(dialogue)) < p)
    lose_speech = dialogue.speech_present & (rng.random(len(dialogue)) < p)
    text_left = dialogue.text_present & ~lose_text
    speech_left = dialogue.speech_present & ~lose_speech
    empty = ~text_left & ~speech_left & (dialogue.text_present | dialogue.speech_present)
    keep_text = empty & dialogue.text_present & ((rng.random(len(dialogue)) < 0.5) | ~dialogue.speech_present)
    text_left |= keep_text
    speech_left |= empty & ~keep_text
    return replace(
        dialogue,
        text=np.where(text_left[:, None], dialogue.text, 0.0).astype(np.float32),
        text_present=text_left,
        speech=np.where(speech_left[:, None], dialogue.speech, 0.0).astype(np.float32),
        speech_present=speech_left,
    )
