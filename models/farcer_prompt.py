"""FARCER prompts as segments: text, and image slots that the model fills with projected face vectors.

Layout (paper Fig. 2, one label set per corpus):
[system: instructions + k-shot examples] [user: "DIALOGUE:" + one line per turn + label query]
[assistant header] and, in training, the answer: label + end of turn.

A prompt splits into a static prefix (system turn, user header, "DIALOGUE:"), one group of segments
per turn, and the label query, so that the prefix can be encoded once and shared across dialogues.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from backend.dialogue import Turn
from backend.errors import InputError

PastLabels = Literal["none", "gold", "predicted"]
PAST_LABELS: tuple[str, ...] = ("none", "gold", "predicted")
SHOT_COUNTS: tuple[int, ...] = (0, 3, 7)
IMAGE_MARK = "<image:face>"


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True, eq=False)
class Image:
    """An image slot holding one face feature vector (any float sequence: list, array, tensor)."""

    vector: Any


Segment = Text | Image


@dataclass(frozen=True)
class Example:
    """A few-shot example: a short dialogue whose last turn's label is the answer."""

    turns: tuple[Turn, ...]
    faces: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if not self.turns or self.turns[-1].label is None:
            raise InputError("a few-shot example needs at least one turn and a label on its last turn")
        if self.faces is not None and len(self.faces) != len(self.turns):
            raise InputError(
                f"few-shot example has {len(self.turns)} turns but {len(self.faces)} faces; give one per turn"
            )

    @property
    def label(self) -> str:
        return self.turns[-1].label


@dataclass(frozen=True)
class ChatFormat:
    """The text a chat template puts around the system, user and assistant contents."""

    system_start: str = "SYSTEM:\n"
    user_start: str = "\n\nUSER:\n"
    assistant_start: str = "\n\nASSISTANT: "
    assistant_end: str = "\n"

    @classmethod
    def from_template(cls, render: Callable[..., str]) -> ChatFormat:
        """Read the pieces off a renderer with the signature of `tokenizer.apply_chat_template(...,
        tokenize=False)`, by rendering placeholder contents and splitting around them."""
        sys, usr, ans = "\x00SYS\x00", "\x00USR\x00", "\x00ANS\x00"
        messages = [{"role": "system", "content": sys}, {"role": "user", "content": usr}]
        prompt = render(messages, add_generation_prompt=True)
        answered = render([*messages, {"role": "assistant", "content": ans}], add_generation_prompt=False)
        if sys not in prompt or usr not in prompt or ans not in answered:
            raise InputError(
                "the tokenizer's chat template drops the system or user message; FARCER needs both"
            )
        system_start, rest = prompt.split(sys)
        user_start, assistant_start = rest.split(usr)
        assistant_end = answered.split(ans)[1]
        return cls(system_start, user_start, assistant_start, assistant_end)


@dataclass(frozen=True)
class Prompt:
    """A prompt in the three parts that the incremental path caches separately."""

    prefix: list[Segment]
    turns: list[list[Segment]] = field(default_factory=list)
    query: list[Segment] = field(default_factory=list)

    @property
    def segments(self) -> list[Segment]:
        return [*self.prefix, *(s for line in self.turns for s in line), *self.query]


def instructions(labels: Sequence[str], past_labels: PastLabels = "none") -> str:
    names = ", ".join(labels[:-1]) + f", or {labels[-1]}" if len(labels) > 1 else labels[0]
    text = (
        "You are FARCER, a high-quality emotion recognizer. Classify the emotion of the last speaker of a "
        "dialogue based on past utterances and the images of speakers.\n\nRules:\n"
        "1. Classify the emotion of the last speaker in the dialogue.\n"
        f"2. The output must be one of the {len(labels)} emotion labels: {names}.\n"
        "3. The output must be a single emotion label.\n"
    )
    if past_labels != "none":
        text += "Earlier utterances carry their speaker's emotion in parentheses.\n"
    return text


def turn_segments(turn: Turn, face: Any = None, label: str | None = None) -> list[Segment]:
    """`{Speaker}: <image> {Utterance}` (+ the speaker's emotion for a past turn); no slot without a face."""
    head = [Text(f"{turn.speaker}: "), Image(face)] if face is not None else [Text(f"{turn.speaker}:")]
    tail = f" ({turn.speaker}'s current emotion: {label})" if label is not None else ""
    return [*head, Text(f" {turn.text}{tail}\n")]


def query_segments(speaker: str, chat: ChatFormat) -> list[Segment]:
    return [Text(f"{speaker}'s EMOTION LABEL:"), Text(chat.assistant_start)]


def answer_segments(label: str, chat: ChatFormat) -> list[Segment]:
    return [Text(label), Text(chat.assistant_end)]


def example_segments(example: Example, past_labels: PastLabels) -> list[Segment]:
    faces = example.faces or (None,) * len(example.turns)
    lines = [
        turn_segments(turn, face, turn.label if past_labels != "none" else None)
        for turn, face in zip(example.turns[:-1], faces[:-1])
    ]
    last = example.turns[-1]
    return [
        Text("DIALOGUE:\n"),
        *(s for line in lines for s in line),
        *turn_segments(last, faces[-1]),
        Text(f"{last.speaker}'s EMOTION LABEL: {last.label}\n\n"),
    ]


def prefix_segments(
    labels: Sequence[str], shots: Sequence[Example], past_labels: PastLabels, chat: ChatFormat
) -> list[Segment]:
    """Instructions and examples in the system turn, then the user header and "DIALOGUE:"."""
    _check_past_labels(past_labels)
    for i, shot in enumerate(shots):
        if shot.label not in labels:
            raise InputError(
                f"few-shot example {i} has label {shot.label!r}; expected one of {', '.join(labels)}"
            )
    examples = [Text("\nFew-shot examples:\n\n")] if shots else []
    for shot in shots:
        examples += example_segments(shot, past_labels)
    return [
        Text(chat.system_start + instructions(labels, past_labels)),
        *examples,
        Text(chat.user_start + "DIALOGUE:\n"),
    ]


def build_prompt(
    turns: Sequence[Turn],
    labels: Sequence[str],
    *,
    faces: Sequence[Any] | None = None,
    shots: Sequence[Example] = (),
    past_labels: PastLabels = "none",
    predicted: Sequence[str] | None = None,
    chat: ChatFormat | None = None,
) -> Prompt:
    """The prompt asking for the label of the last turn, in its three parts."""
    chat = chat or ChatFormat()
    if not turns:
        raise InputError("a dialogue prompt needs at least one turn")
    faces = faces if faces is not None else (None,) * len(turns)
    if len(faces) != len(turns):
        raise InputError(
            f"got {len(faces)} faces for {len(turns)} turns; give one per turn (None for no face)"
        )
    past = past_turn_labels(turns[:-1], past_labels, predicted)
    return Prompt(
        prefix=prefix_segments(labels, shots, past_labels, chat),
        turns=[turn_segments(t, f, label) for t, f, label in zip(turns, faces, [*past, None])],
        query=query_segments(turns[-1].speaker, chat),
    )


def build_dialogue_prompt(turns: Sequence[Turn], labels: Sequence[str], **kwargs: Any) -> list[Segment]:
    """`build_prompt(...)` as one flat segment list."""
    return build_prompt(turns, labels, **kwargs).segments


def past_turn_labels(
    turns: Sequence[Turn], past_labels: PastLabels, predicted: Sequence[str] | None = None
) -> list[str | None]:
    """The label shown on each past turn: none, the gold one, or the model's own earlier prediction."""
    _check_past_labels(past_labels)
    if past_labels == "none":
        return [None] * len(turns)
    if past_labels == "predicted":
        if predicted is None or len(predicted) < len(turns):
            raise InputError(
                f"past_labels='predicted' needs a predicted label for each of the {len(turns)} past turns"
            )
        return list(predicted[: len(turns)])
    missing = [i for i, t in enumerate(turns) if t.label is None]
    if missing:
        raise InputError(f"past_labels='gold' needs labels on all past turns; turns {missing} have none")
    return [t.label for t in turns]


def render_text(segments: Sequence[Segment]) -> str:
    """The prompt as text, with image slots shown as `<image:face>` (for --explain and teaching)."""
    return "".join(s.text if isinstance(s, Text) else IMAGE_MARK for s in segments)


def sample_shots(pool: Sequence[Example], k: int, seed: int) -> list[Example]:
    """k examples drawn without replacement, the same for the same seed."""
    if k not in SHOT_COUNTS:
        raise InputError(f"shots must be one of {SHOT_COUNTS}, got {k}")
    if k > len(pool):
        raise InputError(f"asked for {k} few-shot examples but the pool has only {len(pool)}")
    return random.Random(seed).sample(list(pool), k)


def training_prompts(pool: Sequence[Example], n: int = 10, k: int = 7, seed: int = 0) -> list[list[Example]]:
    """n distinct seeded k-shot example lists to rotate through during training."""
    if k not in SHOT_COUNTS:
        raise InputError(f"shots must be one of {SHOT_COUNTS}, got {k}")
    if k > len(pool):
        raise InputError(f"asked for {k} few-shot examples but the pool has only {len(pool)}")
    rng = random.Random(seed)
    chosen: dict[tuple[int, ...], None] = {}
    for _ in range(100 * n):
        chosen.setdefault(tuple(rng.sample(range(len(pool)), k)), None)
        if len(chosen) == n:
            return [[pool[i] for i in idx] for idx in chosen]
    raise InputError(
        f"a pool of {len(pool)} examples cannot give {n} distinct {k}-shot prompts; add examples"
    )


def _check_past_labels(past_labels: str) -> None:
    if past_labels not in PAST_LABELS:
        raise InputError(f"past_labels must be one of {', '.join(PAST_LABELS)}, got {past_labels!r}")
