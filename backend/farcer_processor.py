"""The FARCER processor: dialogues -> prompt segments -> token ids and face vectors for `models.farcer`.

Like a transformers processor it holds the tokenizer and the label set, and it runs the model on
turn-level inputs (`label_dialogue`, `pack`, `greedy_label`) for the predictor, training and the
benchmark, which never build token ids themselves.

Prompt layout (paper Fig. 2, one label set per corpus):
[system: instructions + k-shot examples] [user: "DIALOGUE:" + one line per turn + label query]
[assistant header] and, in training, the answer: label + end of turn.

A prompt splits into a static prefix (system turn, user header, "DIALOGUE:"), one group of segments
per turn, and the label query, so that the prefix can be encoded once and shared across dialogues.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import Tensor

from backend.dialogue import Turn
from backend.errors import InputError
from models.farcer import (
    IMAGE,
    PAST_LABELS,
    TURNS_PER_PASS,
    DialogueTurn,
    Farcer,
    Packed,
    PastLabels,
    PrefixCache,
    Tokens,
)

SHOT_COUNTS: tuple[int, ...] = (0, 3, 7)
IMAGE_MARK = "<image:face>"


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True, eq=False)
class Image:
    """An image slot holding one face feature vector (any float sequence: list, array, tensor)."""

    vector: Any


@dataclass(frozen=True)
class Utterance:
    """A turn's words after its speaker, with the speaker's emotion on a past turn that shows one.
    It is one piece of text for the tokenizer; the teaching view shows the label part apart."""

    speaker: str
    words: str
    label: str | None = None

    @property
    def label_text(self) -> str:
        return f" ({self.speaker}'s current emotion: {self.label})" if self.label is not None else ""

    @property
    def text(self) -> str:
        return f" {self.words}{self.label_text}\n"


Segment = Text | Image | Utterance


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


def chat_format(tokenizer: Any) -> ChatFormat:
    """The tokenizer's chat template as a ChatFormat, or a plain one ending answers with EOS."""
    if getattr(tokenizer, "chat_template", None):
        return ChatFormat.from_template(partial(tokenizer.apply_chat_template, tokenize=False))
    if tokenizer.eos_token is None:
        raise InputError("the tokenizer has neither a chat template nor an EOS token to end answers with")
    return ChatFormat(assistant_end=tokenizer.eos_token)


@dataclass(frozen=True)
class Prompt:
    """A prompt in the three parts that the incremental path caches separately."""

    prefix: list[Segment]
    turns: list[list[Segment]] = field(default_factory=list)
    query: list[Segment] = field(default_factory=list)

    @property
    def segments(self) -> list[Segment]:
        return [*self.prefix, *(s for line in self.turns for s in line), *self.query]


# ----------------------------------------------------------------------------- segments


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
    return [*head, Utterance(turn.speaker, turn.text, label)]


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
    start: int = 0,
) -> Prompt:
    """The prompt asking for the label of the last turn, in its three parts; `start` is the first
    past turn it shows (the sliding window's start)."""
    chat = chat or ChatFormat()
    if not turns:
        raise InputError("a dialogue prompt needs at least one turn")
    faces = faces if faces is not None else (None,) * len(turns)
    if len(faces) != len(turns):
        raise InputError(
            f"got {len(faces)} faces for {len(turns)} turns; give one per turn (None for no face)"
        )
    past = past_turn_labels(turns[:-1], past_labels, predicted)
    shown = zip(turns[start:], faces[start:], [*past, None][start:])
    return Prompt(
        prefix=prefix_segments(labels, shots, past_labels, chat),
        turns=[turn_segments(t, f, label) for t, f, label in shown],
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
    """The prompt as text, with image slots shown as `<image:face>`."""
    return "".join(IMAGE_MARK if isinstance(s, Image) else s.text for s in segments)


def structured(segments: Sequence[Segment]) -> list[dict[str, str]]:
    """The prompt for the teaching view: {"kind": "text"|"image"|"label", "text"} pieces (a label piece
    also names its "speaker" and "label"); their texts joined are `render_text(segments)`."""
    out: list[dict[str, str]] = []

    def text(piece: str) -> None:
        if out and out[-1]["kind"] == "text":
            out[-1]["text"] += piece
        elif piece:
            out.append({"kind": "text", "text": piece})

    for s in segments:
        if isinstance(s, Image):
            out.append({"kind": "image", "text": IMAGE_MARK})
        elif isinstance(s, Utterance) and s.label is not None:
            text(f" {s.words}")
            out.append({"kind": "label", "text": s.label_text, "speaker": s.speaker, "label": s.label})
            text("\n")
        else:
            text(s.text)
    return out


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


def label_token_weights(
    labels: Sequence[str], tokenizer: Any, train_label_counts: Mapping[str, int], eot: str | None = None
) -> dict[int, float]:
    """Balanced weights (n_samples / (n_classes * count), as sklearn's compute_class_weight) over the
    tokens of the training answers: each answer is its label's tokens followed by the end-of-turn text."""
    eot = tokenizer.eos_token if eot is None else eot
    eot_ids = tokenizer.encode(eot, add_special_tokens=False)
    counts: Counter[int] = Counter()
    for label, n in train_label_counts.items():
        if label not in labels:
            raise InputError(f"training label {label!r} is not one of {', '.join(labels)}")
        for token in tokenizer.encode(label, add_special_tokens=False) + eot_ids:
            counts[token] += n
    counts = Counter({t: c for t, c in counts.items() if c > 0})
    if not counts:
        raise InputError("train_label_counts has no positive count; count the training labels first")
    total = sum(counts.values())
    return {token: total / (len(counts) * c) for token, c in counts.items()}


# ----------------------------------------------------------------------------- the processor


@dataclass
class DialogueLabels:
    """Per-turn scores: logprobs[i, j] = log P(label j + end of turn | prompt for turn i)."""

    logprobs: Tensor
    labels: list[str]
    warning: str | None = None
    starts: list[int] = field(default_factory=list)  # first past turn inside the window, per turn

    @property
    def probs(self) -> Tensor:
        return self.logprobs.softmax(-1)


def face_weighted(text: Any, with_faces: Any, weight: float) -> Any:
    """Label scores (tensors or arrays) a face moves only a share `weight` of the way from text-only ones."""
    return text + weight * (with_faces - text)


class FarcerProcessor:
    """A tokenizer, its chat format and a label set: segments -> `Tokens`, and the label candidates
    (each label's tokens + the end of turn) that a `Farcer` is built with."""

    def __init__(self, tokenizer: Any, labels: Sequence[str]):
        if not labels:
            raise InputError("FARCER needs at least one label")
        self.tokenizer = tokenizer
        self.labels = tuple(labels)
        self.chat = chat_format(tokenizer)
        self._token_ids: dict[str, list[int]] = {}
        self.end_ids = self.token_ids(self.chat.assistant_end)
        self.label_ids = [self.token_ids(label) for label in self.labels]
        if not self.end_ids:
            raise InputError(
                "the chat format's end of turn tokenizes to nothing; FARCER needs an end-of-turn token"
            )
        unk = getattr(tokenizer, "unk_token_id", None)
        for label, ids in zip(self.labels, self.label_ids):
            if not ids or (unk is not None and unk in ids):
                raise InputError(
                    f"label {label!r} is not in the tokenizer's vocabulary; use another label set"
                )
        if len({tuple(ids) for ids in self.label_ids}) < len(self.labels):
            raise InputError("two labels tokenize to the same ids; the tokenizer cannot tell them apart")

    @property
    def candidates(self) -> list[list[int]]:
        return [ids + self.end_ids for ids in self.label_ids]

    def token_ids(self, text: str) -> list[int]:
        if text not in self._token_ids:
            self._token_ids[text] = self.tokenizer.encode(text, add_special_tokens=False)
        return self._token_ids[text]

    def tokens(self, segments: Sequence[Segment]) -> Tokens:
        """Token ids (IMAGE for each image slot) and the slots' face vectors."""
        ids = [i for s in segments for i in ([IMAGE] if isinstance(s, Image) else self.token_ids(s.text))]
        return Tokens(tuple(ids), tuple(s.vector for s in segments if isinstance(s, Image)))

    def label_index(self, label: str) -> int:
        if label not in self.labels:
            raise InputError(f"unknown target label {label!r}; expected one of {', '.join(self.labels)}")
        return self.labels.index(label)

    def token_weights(self, train_label_counts: Mapping[str, int]) -> dict[int, float]:
        """Balanced per-token loss weights from the training label counts (`Farcer.set_token_weights`)."""
        return label_token_weights(self.labels, self.tokenizer, train_label_counts, self.chat.assistant_end)

    def prompt(
        self,
        turns: Sequence[Turn],
        faces: Sequence[Any] | None = None,
        shots: Sequence[Example] = (),
        past_labels: PastLabels = "none",
        predicted: Sequence[str] | None = None,
        start: int = 0,
    ) -> Prompt:
        """The prompt asking the label of the last turn (past turns from `start` on)."""
        return build_prompt(
            turns, self.labels, faces=faces, shots=shots, past_labels=past_labels, predicted=predicted,
            chat=self.chat, start=start,
        )

    # ------------------------------------------------------------------ running the model

    def encode_prefix(
        self, farcer: Farcer, shots: Sequence[Example] = (), past_labels: PastLabels = "none"
    ) -> PrefixCache:
        """Encode instructions + examples once; reuse the result for any number of dialogues."""
        segments = prefix_segments(self.labels, shots, past_labels, self.chat)
        return farcer.encode_prefix(self.tokens(segments), labelled=past_labels != "none")

    def dialogue_turns(
        self, turns: Sequence[Turn], faces: Sequence[Any] | None, past_labels: PastLabels = "none"
    ) -> list[DialogueTurn]:
        """Each turn's line, label query and the lines later turns see (gold, or one per label)."""
        faces = self._faces(turns, faces)
        # gold labels present where they are needed
        past_turn_labels(turns[:-1], past_labels, predicted=[""] * len(turns))
        out = []
        for turn, face in zip(turns, faces):
            later: list[str | None] = []
            if past_labels == "gold":
                later = [turn.label]
            elif past_labels == "predicted":
                later = list(self.labels)
            out.append(DialogueTurn(
                self.tokens(turn_segments(turn, face)),
                self.tokens(query_segments(turn.speaker, self.chat)),
                tuple(self.tokens(turn_segments(turn, face, label)) for label in later),
            ))
        return out

    def label_dialogue(
        self,
        farcer: Farcer,
        turns: Sequence[Turn],
        faces: Sequence[Any] | None,
        prefix: PrefixCache,
        past_labels: PastLabels = "none",
        turns_per_pass: int = TURNS_PER_PASS,
    ) -> DialogueLabels:
        """Every turn labelled incrementally on top of the cached prefix (`Farcer.label_dialogue`),
        faces weighed by the head's face weight (`_face_weighted`)."""
        return self._face_weighted(farcer, turns, faces, past_labels,
                                   lambda inputs: farcer.label_dialogue(inputs, prefix, past_labels, turns_per_pass))

    def label_dialogue_naive(
        self,
        farcer: Farcer,
        turns: Sequence[Turn],
        faces: Sequence[Any] | None,
        prefix: PrefixCache,
        past_labels: PastLabels = "none",
    ) -> DialogueLabels:
        """`label_dialogue` re-encoding every turn's prompt from scratch (the reference)."""
        return self._face_weighted(farcer, turns, faces, past_labels,
                                   lambda inputs: farcer.label_dialogue_naive(inputs, prefix, past_labels))

    def pack(
        self,
        farcer: Farcer,
        turns: Sequence[Turn],
        faces: Sequence[Any] | None,
        targets: Sequence[int],
        shots: Sequence[Example] = (),
        past_labels: PastLabels = "none",
    ) -> Packed:
        """One training row asking the gold label of every turn in `targets` (`Farcer.pack`): the
        past turns carry their gold labels unless past_labels is none."""
        faces = faces if faces is not None else [None] * len(turns)
        if not targets or len(faces) != len(turns) or any(not 0 <= i < len(turns) for i in targets):
            raise InputError(
                f"pack needs one face (or None) per turn and target indices below {len(turns)}; got "
                f"{len(faces)} faces and targets {list(targets)}"
            )
        last = max(targets)
        shown = past_turn_labels(turns[:last], "none" if past_labels == "none" else "gold")
        prefix = self.tokens(prefix_segments(self.labels, shots, past_labels, self.chat))
        lines = [self.tokens(turn_segments(t, f, lab)) for t, f, lab in zip(turns, faces, shown)]
        branches = []
        for i in targets:
            branch = [*turn_segments(turns[i], faces[i]), *query_segments(turns[i].speaker, self.chat)]
            branches.append((i, self.tokens(branch), self.label_index(turns[i].label)))
        return farcer.pack(prefix, lines, branches)

    def greedy_label(self, farcer: Farcer, segments: Sequence[Segment]) -> tuple[list[int], str | None]:
        """Greedy decoding (paper eq. 8): the generated ids, and the label they spell (None if none)."""
        generated, index = farcer.greedy_label(self.tokens(segments))
        return generated, None if index is None else self.labels[index]

    def _faces(self, turns: Sequence[Turn], faces: Sequence[Any] | None) -> Sequence[Any]:
        if not turns:
            raise InputError("the dialogue has no turns; nothing to label")
        faces = faces if faces is not None else [None] * len(turns)
        if len(faces) != len(turns):
            raise InputError(
                f"got {len(faces)} faces for {len(turns)} turns; give one per turn (None for no face)"
            )
        return faces

    def _face_weighted(
        self, farcer: Farcer, turns: Sequence[Turn], faces: Sequence[Any] | None, past_labels: PastLabels,
        score: Callable[[list[DialogueTurn]], Any],
    ) -> DialogueLabels:
        """`score`'s labels for the turns with their faces. Under a face weight w below 1 the turns are
        scored again without faces and labelled by text + w * (with faces - text): a face moves a turn's
        label scores only a share w of the way it would alone, so a face unrelated to the words cannot
        overrule plainly emotional words (issue 12). With predicted past labels each pass follows its own."""
        with_faces = self._labels(lambda: score(self.dialogue_turns(turns, faces, past_labels)))
        weight = farcer.config.face_weight
        if weight == 1.0 or faces is None or all(face is None for face in faces):
            return with_faces
        text = self._labels(lambda: score(self.dialogue_turns(turns, None, past_labels)))
        logprobs = face_weighted(text.logprobs, with_faces.logprobs, weight)
        return DialogueLabels(logprobs, [self.labels[int(j)] for j in logprobs.argmax(-1)], with_faces.warning,
                              with_faces.starts)

    def _labels(self, run: Callable[[], Any]) -> DialogueLabels:
        try:
            scores = run()
        except ValueError as exc:  # the model's complaints about these turns are the caller's input errors
            raise InputError(str(exc)) from None
        return DialogueLabels(
            scores.logprobs, [self.labels[j] for j in scores.predicted], scores.warning, scores.starts
        )

