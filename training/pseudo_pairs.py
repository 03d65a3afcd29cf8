"""Pseudo-pairs: speech (or faces) from one corpus beside the transcripts of another.

No corpus here has speech and text of the same utterances, so the cross-modal expert and the gate
are trained on dialogues whose speech vector for a turn is a clip from a speech corpus. If every
clip had the turn's own emotion (label-matched), speech would carry the label more reliably than
in any real conversation and the gate would learn to read speech alone (issue 12). A `PairMix`
therefore draws, per turn, a clip of the turn's emotion, a neutral clip (flat voice, emotional
words) or a clip of a random emotion (voice and words disagree). Speech is also dropped at random
so the gate learns to do without. Faces for FARCER are paired the same way (`pair_images`).

Faces have no real aligned corpus here (RAVDESS gives speech with its own emotion-neutral sentences),
so `neutral_line_dialogues` builds the face counterpart: emotion-neutral lines written for this
purpose, each beside a face and labelled with the face's emotion. There the words say nothing and the
face decides, as RAVDESS's voice does.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from backend.dialogue import Dialogue, LabelledImage, Turn


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


def mix_arg(flag: str) -> Callable[[str], tuple[float, float, float]]:
    """An argparse type for `flag`: "matched,neutral,random" shares that make a PairMix."""

    def parse(text: str) -> tuple[float, float, float]:
        try:
            shares = tuple(float(x) for x in text.split(","))
            PairMix(*shares)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"{flag} takes three shares (matched, neutral, random) summing to 1, got {text!r}") from None
        return shares

    return parse

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


# Lines that carry no emotion, held apart by split so that validation and test never read a line the
# model trained on.
NEUTRAL_LINES = {
    "train": (
        "The meeting moved to three o'clock.", "I put the keys on the kitchen table.", "The bus leaves from the corner.",
        "We need two more chairs for the room.", "The report is in the blue folder.", "My sister lives near the station.",
        "The store closes at nine tonight.", "I took the train this morning.", "The printer is on the second floor.",
        "He asked for the phone number again.", "The box goes on the top shelf.", "We talked about the schedule.",
        "The package came on Tuesday.", "I read the letter at lunch.", "The window faces the street.",
        "She parked the car behind the building.", "The class starts after the break.", "I wrote the address down.",
        "The coffee machine is by the door.", "They moved the desk to the other wall.", "The tickets are in my bag.",
        "We walked to the bank and back.", "The lamp needs a new bulb.", "He left the umbrella in the hall.",
    ),
    "validation": (
        "The plates go in the left cupboard.", "I called the office at ten.", "The map is on the back seat.",
        "We ordered the paper last week.", "The elevator stops at every floor.", "She copied the list for everyone.",
    ),
    "test": (
        "The file is on the shared drive.", "I changed the sheets on Monday.", "The bakery is across the road.",
        "He brought the chairs from the garage.", "The form needs two signatures.", "We checked the bus times.",
    ),
}


def neutral_line_dialogues(
    images: Sequence[LabelledImage], n: int, split: str, rng: np.random.Generator, turns: int = 6,
) -> list[Dialogue]:
    """`n` dialogues of `turns` turns between two speakers: each turn an emotion-neutral line of `split`
    (NEUTRAL_LINES) beside a random face from `images`, labelled with the face's label; the face is the
    turn's own (`Turn.face`)."""
    lines = NEUTRAL_LINES[split]
    dialogues = []
    for d in range(n):
        chosen = [images[i] for i in rng.integers(len(images), size=turns)]
        dialogues.append(Dialogue(f"neutral-lines-{split}-{d}", [
            Turn(("Alex", "Sam")[t % 2], None, None, lines[rng.integers(len(lines))], label=image.label,
                 face=image.path)
            for t, image in enumerate(chosen)
        ], split=split))
    return dialogues


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
