"""FARCER: a causal LM that reads a dialogue with a projected face vector before each utterance.

The model takes prompts as `Tokens`: token ids with IMAGE (-1) at each image slot and one face
vector per slot (backend.farcer_processor turns dialogues into them). Text ids go through the LM's
embedding table, image slots through the modality projector. A label is scored as log P(label
tokens + end of turn | prompt) for every candidate at once; every-turn labelling extends one KV
cache pass by pass on top of a cached instructions + examples prefix, each pass appending up to TURNS_PER_PASS
turns and asking each turn's label on a branch it crops off.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import accumulate
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache

ProjectorKind = Literal["base", "three-layer"]
PROJECTORS: tuple[str, ...] = ("base", "three-layer")
PastLabels = Literal["none", "gold", "predicted"]
PAST_LABELS: tuple[str, ...] = ("none", "gold", "predicted")
IMAGE = -1  # the token id of an image slot
# Turns asked per incremental pass. A pass's branches sit in one attention block whose masked-out
# branch-to-branch part still costs (the kernels do not skip masked tiles), so it grows with the
# square of the pass; fewer, larger passes save per-pass overhead. 8 was fastest for SmolLM2-135M on
# 2 CPU cores (20 turns, 7 shots: 4.2 s against 4.4-4.6 s with 16 and 4.3 s with 4).
TURNS_PER_PASS = 8


@dataclass
class FarcerConfig:
    image_dim: int = 768
    projector: ProjectorKind = "base"
    dropout: float = 0.05
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    lora_layers: int = 0  # adapters on the last lora_layers decoder layers only; 0: on every layer
    max_context: int = 8192
    # Added to each label's log-probability before labels are compared (a prior correction chosen on
    # validation, see training.farcer.choose_label_bias); (): nothing added.
    label_bias: tuple[float, ...] = ()
    # How far a turn's face may move its label scores from the same turn's text-only scores: the
    # processor labels with text + face_weight * (with faces - text) (chosen on validation, see
    # training.farcer.choose_face_weight); 1: the scores with faces as they are.
    face_weight: float = 1.0

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        self.label_bias = tuple(float(b) for b in self.label_bias)
        if self.projector not in PROJECTORS:
            raise ValueError(f"unknown projector {self.projector!r}; choose 'base' or 'three-layer'")
        if not 0.0 <= self.face_weight <= 1.0:
            raise ValueError(f"face_weight must be between 0 and 1, got {self.face_weight}")
        if self.lora_layers < 0:
            raise ValueError(f"lora_layers must be 0 (every layer) or positive, got {self.lora_layers}")
        if self.image_dim < 1 or self.max_context < 1:
            raise ValueError(
                f"image_dim and max_context must be positive, got {self.image_dim} and {self.max_context}"
            )


@dataclass(frozen=True)
class Tokens:
    """A piece of prompt: token ids with IMAGE at each image slot, and the slots' face vectors in
    order (any float sequences: lists, arrays, tensors)."""

    ids: tuple[int, ...] = ()
    images: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        slots = sum(i == IMAGE for i in self.ids)
        if slots != len(self.images):
            raise ValueError(
                f"{slots} image slots but {len(self.images)} image vectors; give one vector per slot"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(self.ids + other.ids, self.images + other.images)

    @staticmethod
    def join(parts: Iterable[Tokens]) -> Tokens:
        parts = list(parts)
        return Tokens(
            tuple(i for p in parts for i in p.ids), tuple(v for p in parts for v in p.images)
        )


@dataclass(frozen=True)
class DialogueTurn:
    """One turn to label every turn of a dialogue: its line as its own prompt ends with it, the label
    query after it, and how later turns see its line: `later` is empty without past labels, holds the
    line with its gold label for gold past labels, and one line per label candidate (in candidate
    order) for predicted past labels, of which the model keeps its own argmax's."""

    line: Tokens
    query: Tokens
    later: tuple[Tokens, ...] = ()


class ModalityProjector(nn.Module):
    """Face vector -> LM input embedding. base: one Linear; three-layer: two Linear+GELU+Dropout blocks
    then the Linear to the LM width."""

    def __init__(self, image_dim: int, model_dim: int, kind: ProjectorKind = "base", dropout: float = 0.05):
        super().__init__()
        if kind == "base":
            layers: list[nn.Module] = [nn.Linear(image_dim, model_dim)]
        elif kind == "three-layer":
            block = [nn.Linear(image_dim, image_dim), nn.GELU(), nn.Dropout(dropout)]
            layers = [*block, *copy.deepcopy(block), nn.Linear(image_dim, model_dim)]
        else:
            raise ValueError(f"unknown projector {kind!r}; choose 'base' or 'three-layer'")
        self.kind = kind
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class PrefixCache:
    """The encoded instructions + examples; shared read-only by every dialogue labelled on top of it."""

    cache: DynamicCache
    tokens: Tokens
    labelled: bool  # whether it was built for past labels (gold or predicted) on the dialogue lines

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    def copy(self, config: Any) -> DynamicCache:
        # Cache updates concatenate into new tensors and crops slice, so sharing the tensors is safe.
        return DynamicCache([(layer.keys, layer.values) for layer in self.cache.layers], config=config)


@dataclass
class DialogueScores:
    """Per-turn scores: logprobs[i, j] = log P(candidate j | prompt for turn i)."""

    logprobs: Tensor
    predicted: list[int]  # the argmax candidate per turn
    warning: str | None = None
    starts: list[int] = field(default_factory=list)  # first past turn inside the window, per turn


class Farcer(nn.Module):
    """A frozen causal LM, a modality projector and the label candidates as token ids: candidate j
    is `label_ids[j] + end_ids` (a label's tokens, then the chat format's end of turn)."""

    def __init__(
        self,
        lm: nn.Module,
        config: FarcerConfig,
        label_ids: Sequence[Sequence[int]],
        end_ids: Sequence[int],
    ):
        super().__init__()
        if not end_ids:
            raise ValueError("end_ids is empty; FARCER needs an end-of-turn token after each label")
        if not label_ids or any(not ids for ids in label_ids):
            raise ValueError("give at least one label candidate, each with at least one token id")
        candidates = [[int(i) for i in ids] + [int(i) for i in end_ids] for ids in label_ids]
        if any(i < 0 for c in candidates for i in c):
            raise ValueError("label and end-of-turn token ids must be non-negative")
        if len({tuple(c) for c in candidates}) < len(candidates):
            raise ValueError("two label candidates have the same token ids")
        self.config = config
        self.lm = lm.requires_grad_(False)
        table = lm.get_input_embeddings()
        self.projector = ModalityProjector(
            config.image_dim, table.embedding_dim, config.projector, config.dropout
        )
        self.projector.to(table.weight.device)
        self.max_context = min(
            config.max_context, getattr(lm.config, "max_position_embeddings", config.max_context)
        )
        self.end_ids = [int(i) for i in end_ids]
        self.candidates = candidates
        self.token_weights: Tensor | None = None
        self.set_label_bias(config.label_bias)

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    @property
    def n_labels(self) -> int:
        return len(self.candidates)

    def set_label_bias(self, bias: Sequence[float]) -> None:
        """Add `bias[j]` to label j's log-probability wherever labels are scored (() adds nothing)."""
        if bias and len(bias) != self.n_labels:
            raise ValueError(f"label_bias has {len(bias)} values for {self.n_labels} labels")
        self.config = replace(self.config, label_bias=tuple(bias))  # __post_init__ makes them floats

    def set_face_weight(self, weight: float) -> None:
        """How far faces may move the label scores from text-only ones (FarcerConfig.face_weight)."""
        self.config = replace(self.config, face_weight=float(weight))  # __post_init__ checks the range

    def set_token_weights(self, weights: Mapping[int, float] | None) -> None:
        """Weight the training loss per target token (tokens not named weigh 1); None: unweighted."""
        if weights is None:
            self.token_weights = None
            return
        vocab = self.lm.get_output_embeddings().weight.shape[0]
        if any(not 0 <= t < vocab for t in weights):
            raise ValueError(f"token weights name ids outside the vocabulary of {vocab}")
        self.token_weights = torch.ones(vocab, device=self.device)
        self.token_weights[list(weights)] = torch.tensor(list(weights.values()), device=self.device)

    def embed(self, tokens: Tokens) -> Tensor:
        """[L, d]: text tokens through the embedding table, image slots through the projector."""
        ids = torch.tensor(tokens.ids, dtype=torch.long)
        image = ids == IMAGE
        if bool((ids[~image] < 0).any()):
            raise ValueError(f"token ids must be non-negative or IMAGE ({IMAGE}) for an image slot")
        n_text = len(ids) - len(tokens.images)
        table = self.lm.get_input_embeddings()
        parts = [table(ids[~image].to(self.device))]
        if tokens.images:
            faces = torch.stack([self._face(v) for v in tokens.images])
            parts.append(self.projector(faces).to(parts[0].dtype))
        order = torch.empty(len(ids), dtype=torch.long)
        order[~image] = torch.arange(n_text)
        order[image] = n_text + torch.arange(len(tokens.images))
        return torch.cat(parts)[order.to(self.device)]

    def forward(self, prompts: Sequence[Tokens], targets: Sequence[int]) -> Tensor:
        """Teacher-forced training loss: weighted cross-entropy over each target candidate's label +
        end-of-turn tokens (paper eq. 7), all rows in one pass."""
        if len(prompts) != len(targets) or not prompts:
            raise ValueError(
                f"got {len(prompts)} prompts and {len(targets)} targets; give one target per prompt"
            )
        answers = [self.candidates[self._candidate(t)] for t in targets]
        table = self.lm.get_input_embeddings()
        embeds = [
            torch.cat([self.embed(p), table(torch.tensor(a, device=self.device))])
            for p, a in zip(prompts, answers)
        ]
        x, valid, positions = _left_pad(embeds)
        # Left padding ends every answer at the last position, so one slice of logits serves all rows.
        k = max(len(a) for a in answers)
        logits = self._run(x, _causal(valid), positions, None, keep=k + 1)[:, :-1]
        target = torch.full((len(answers), k), -100, dtype=torch.long, device=self.device)
        for row, answer in enumerate(answers):
            target[row, k - len(answer) :] = torch.tensor(answer, device=self.device)
        ce = F.cross_entropy(
            logits.float().flatten(0, 1), target.flatten(), ignore_index=-100, reduction="none"
        )
        weight = (target.flatten() != -100).float()
        if self.token_weights is not None:
            weight = weight * self.token_weights[target.flatten().clamp(min=0)]
        return (ce * weight).sum() / weight.sum()

    def pack(
        self, prefix: Tokens, lines: Sequence[Tokens], targets: Sequence[tuple[int, Tokens, int]]
    ) -> Packed:
        """One training row that asks the label of several turns at once.

        The trunk is the prefix and `lines` (the past turns as later turns see them); target
        (i, branch, j) adds a branch [branch, answer j] (turn i's line and label query, then candidate
        j) that sees the prefix and lines[:i] at the positions its prompt would have alone (the tree
        mask of `_score`), so the row trains exactly what `label_dialogue` asks, every target in one
        teacher-forced pass."""
        if not targets or any(not 0 <= i <= len(lines) for i, _, _ in targets):
            raise ValueError(
                f"pack needs at least one target, each seeing at most the {len(lines)} lines given; got "
                f"targets at {[i for i, _, _ in targets]}"
            )
        trunk = Tokens.join([prefix, *lines])
        ids = list(trunk.ids)
        ends = list(accumulate((len(line) for line in lines), initial=len(prefix)))
        table = self.lm.get_input_embeddings()
        parts, positions = [self.embed(trunk)], [torch.arange(len(ids))]
        spans, label_at, label_ids = [], [], []
        for i, branch, label in targets:
            answer = self.candidates[self._candidate(label)]
            parts += [self.embed(branch), table(torch.tensor(answer, device=self.device))]
            begin, size = len(ids), len(branch) + len(answer)
            ids += list(branch.ids) + answer
            spans.append((begin, size, ends[i]))
            positions.append(ends[i] + torch.arange(size))
            label_at += range(begin + size - len(answer) - 1, begin + size - 1)
            label_ids += answer
        allowed = torch.zeros(len(ids), len(ids), dtype=torch.bool)
        allowed[: ends[-1], : ends[-1]] = torch.ones(ends[-1], ends[-1], dtype=torch.bool).tril()
        for begin, size, seen in spans:
            allowed[begin : begin + size, :seen] = True
            allowed[begin : begin + size, begin : begin + size] = torch.ones(
                size, size, dtype=torch.bool
            ).tril()
        text_at = [p for p in range(ends[0], ends[-1] - 1) if ids[p + 1] >= 0]
        return Packed(
            torch.cat(parts),
            allowed,
            torch.cat(positions),
            torch.tensor(label_at),
            torch.tensor(label_ids),
            torch.tensor(text_at, dtype=torch.long),
            torch.tensor([ids[p + 1] for p in text_at], dtype=torch.long),
        )

    def packed_loss(
        self, rows: Sequence[Packed], text_weight: float = 0.0, start_layer: int = 0
    ) -> tuple[Tensor, dict[str, float]]:
        """Weighted label cross-entropy over all rows' answers (+ text_weight x the LM loss on the
        dialogue lines), from one pass over the right-padded batch. With `start_layer` the rows' x
        are the states entering that decoder layer (`frozen_states`), and only the layers above run."""
        x, allowed, positions = _padded(rows)
        with self._decoder_layers(start_layer, None):
            hidden = self._decode(x, allowed, positions, None)
        head = self.lm.get_output_embeddings()

        def gather(at: str, ids: str) -> tuple[Tensor, Tensor]:
            rows_at = torch.cat([torch.full((len(getattr(r, at)),), b) for b, r in enumerate(rows)])
            cols = torch.cat([getattr(r, at) for r in rows])
            target = torch.cat([getattr(r, ids) for r in rows]).to(x.device)
            return head(hidden[rows_at.to(x.device), cols.to(x.device)]).float(), target

        logits, target = gather("label_at", "label_ids")
        weight = torch.ones(len(target), device=x.device)
        if self.token_weights is not None:
            weight = self.token_weights[target]
        label = (F.cross_entropy(logits, target, reduction="none") * weight).sum() / weight.sum()
        parts = {"label": label.item()}
        if text_weight <= 0:
            return label, parts
        logits, target = gather("text_at", "text_ids")
        text = F.cross_entropy(logits, target)
        parts["text"] = text.item()
        return label + text_weight * text, parts

    @property
    def frozen_layers(self) -> int:
        """How many bottom decoder layers hold nothing that trains: on a fixed row their output never
        changes, so training may compute it once (`frozen_states`) and run only the layers above."""
        layers = self.lm.get_decoder().layers
        trains = [any(p.requires_grad for p in layer.parameters()) for layer in layers]
        return trains.index(True) if True in trains else len(layers)

    @torch.no_grad()
    def frozen_states(self, rows: Sequence[Packed], layers: int) -> list[Tensor]:
        """Each row's states entering decoder layer `layers` (unpadded, [len(row), d]). Right padding
        never changes a real position's state: the padded keys are masked out of every query."""
        x, allowed, positions = _padded(rows)
        with self._decoder_layers(0, layers):
            hidden = self._decode(x, allowed, positions, None)
        return [hidden[b, : len(r.x)] for b, r in enumerate(rows)]

    @contextmanager
    def _decoder_layers(self, start: int, stop: int | None) -> Iterator[None]:
        """The decoder runs only layers[start:stop]. Stopping below the top skips the final norm too,
        so the output is the residual stream entering layer `stop`."""
        decoder = self.lm.get_decoder()
        layers, norm = decoder.layers, decoder.norm
        if start == 0 and stop is None:
            yield
            return
        decoder.layers = nn.ModuleList(layers[start:stop])
        if stop is not None and stop < len(layers):
            decoder.norm = nn.Identity()
        try:
            yield
        finally:
            decoder.layers, decoder.norm = layers, norm

    @torch.no_grad()
    def label_logprobs(self, prompts: Sequence[Tokens]) -> Tensor:
        """[B, n_labels] log P(label + end of turn | prompt) for all prompts and candidates in one pass."""
        if not prompts:
            raise ValueError("no prompts to score")
        embeds = [self.embed(p) for p in prompts]
        longest = max(len(e) for e in embeds) + self._longest_answer
        if longest > self.max_context:
            raise ValueError(
                f"a prompt needs {longest} tokens but the model context is {self.max_context}; shorten the "
                "dialogue or use label_dialogue, which drops the oldest turns"
            )
        x, valid, positions = _left_pad(embeds)
        return self._score(x, _causal(valid), positions)

    def score_labels(self, prompts: Sequence[Tokens]) -> Tensor:
        """[B, n_labels] probability of each label, a softmax over the label sequence log-probs."""
        return self.label_logprobs(prompts).softmax(-1)

    @torch.no_grad()
    def greedy_label(self, prompt: Tokens) -> tuple[list[int], int | None]:
        """Greedy decoding (paper eq. 8): the generated ids, and the candidate they spell (None if none)."""
        cache = DynamicCache(config=self.lm.config)
        x = self.embed(prompt)[None]
        generated: list[int] = []
        eot = self.end_ids
        table = self.lm.get_input_embeddings()
        while len(generated) < self._longest_answer:
            generated.append(int(self._extend(cache, x)[0, -1].argmax()))
            if generated[-len(eot) :] == eot:
                break
            x = table(torch.tensor([generated[-1:]], device=self.device))
        return generated, next((j for j, c in enumerate(self.candidates) if c == generated), None)

    @torch.no_grad()
    def encode_prefix(self, prefix: Tokens, labelled: bool = False) -> PrefixCache:
        """Encode instructions + examples once; reuse the result for any number of dialogues.
        `labelled`: the dialogues' past turns will carry labels (gold or predicted)."""
        if not len(prefix):
            raise ValueError("the prefix is empty; it holds at least the instructions")
        cache = DynamicCache(config=self.lm.config)
        self._extend(cache, self.embed(prefix)[None])
        return PrefixCache(cache, prefix, labelled)

    @torch.no_grad()
    def label_dialogue(
        self,
        turns: Sequence[DialogueTurn],
        prefix: PrefixCache,
        past_labels: PastLabels = "none",
        turns_per_pass: int = TURNS_PER_PASS,
    ) -> DialogueScores:
        """Label every turn on top of the cached prefix, extending one KV cache pass by pass.

        A pass appends the lines of up to `turns_per_pass` turns to the cache and asks each of those
        turns' label on its own branch, which sees exactly the lines its own prompt holds and is cropped
        off after the pass. Past turns carry no label, the gold one, or the model's own argmax; with
        predicted labels a turn's line exists only after its label does, so every pass holds one turn."""
        self._check_dialogue(turns, prefix, past_labels)
        if turns_per_pass < 1:
            raise ValueError(f"turns_per_pass must be at least 1, got {turns_per_pass}")
        context = _DialogueContext(self, prefix)
        window = _Window(self.max_context, prefix.length)
        scores: list[Tensor] = []
        starts: list[int] = []
        waiting: list[tuple[int, Tensor]] = []  # branches for the next pass: (lines seen, embeddings)

        def run_pass() -> None:
            scores.extend(context.score(starts[-1], waiting))
            waiting.clear()

        for i, turn in enumerate(turns):
            current = self.embed(turn.line)
            query = self.embed(turn.query)
            need = len(current) + len(query) + self._longest_answer
            start = window.advance([len(line) for line in context.lines], need)
            if waiting and (window.moved or len(waiting) == turns_per_pass):
                run_pass()
            starts.append(start)
            if past_labels == "none":  # the line is kept exactly as the turn's own prompt ends with it
                context.lines.append(current)
                waiting.append((i + 1, query))
                continue
            waiting.append((i, torch.cat([current, query])))
            if past_labels == "predicted":
                run_pass()
            if i + 1 < len(turns):  # no later turn sees the last line
                argmax = int(scores[-1].argmax()) if past_labels == "predicted" else None
                context.lines.append(self.embed(_later(turn, past_labels, argmax)))
        if waiting:
            run_pass()
        logprobs = torch.stack(scores)
        return DialogueScores(logprobs, logprobs.argmax(-1).tolist(), window.warning(), starts)

    @torch.no_grad()
    def label_dialogue_naive(
        self, turns: Sequence[DialogueTurn], prefix: PrefixCache, past_labels: PastLabels = "none"
    ) -> DialogueScores:
        """`label_dialogue` re-encoding the whole prompt from scratch for every turn (the reference)."""
        self._check_dialogue(turns, prefix, past_labels)
        window = _Window(self.max_context, len(prefix.tokens))
        scores, predicted, starts = [], [], []
        for i, turn in enumerate(turns):
            lines = [_later(t, past_labels, predicted[j]) for j, t in enumerate(turns[:i])]
            need = len(turn.line) + len(turn.query) + self._longest_answer
            start = window.advance([len(line) for line in lines], need)
            starts.append(start)
            prompt = Tokens.join([prefix.tokens, *lines[start:], turn.line, turn.query])
            scores.append(self.label_logprobs([prompt])[0])
            predicted.append(int(scores[-1].argmax()))
        return DialogueScores(torch.stack(scores), predicted, window.warning(), starts)

    # ------------------------------------------------------------------ trainable weights

    def trainable_state(self) -> dict[str, Tensor]:
        """What training changes: the whole projector and the LoRA adapters (if any)."""
        tensors = {f"projector.{k}": v for k, v in self.projector.state_dict().items()}
        tensors |= {f"lm.{k}": v for k, v in self.lm.state_dict().items() if "lora_" in k}
        return {k: v.detach().contiguous() for k, v in tensors.items()}

    def load_trainable_state(self, tensors: Mapping[str, Tensor]) -> None:
        """Load `trainable_state()` of a Farcer built the same way (apply_lora first for adapters)."""
        projector = {k[10:]: v for k, v in tensors.items() if k.startswith("projector.")}
        self.projector.load_state_dict(projector)
        lora = {k[3:]: v for k, v in tensors.items() if k.startswith("lm.")}
        own = {k for k in self.lm.state_dict() if "lora_" in k}
        if set(lora) != own:
            raise ValueError(
                f"{len(lora)} adapter tensors given but the model has {len(own)}; "
                "call apply_lora with the same settings before loading (or not, for a projector-only state)"
            )
        self.lm.load_state_dict(lora, strict=False)

    # ------------------------------------------------------------------ internals

    @property
    def _longest_answer(self) -> int:
        return max(len(c) for c in self.candidates)

    def _candidate(self, index: int) -> int:
        if not 0 <= index < len(self.candidates):
            raise ValueError(f"target candidate {index} is out of range; there are {len(self.candidates)}")
        return index

    def _face(self, vector: Any) -> Tensor:
        face = torch.as_tensor(vector, dtype=torch.float32, device=self.device)
        if face.shape != (self.config.image_dim,):
            raise ValueError(
                f"face vector has shape {tuple(face.shape)}, expected ({self.config.image_dim},); "
                "use the face encoder that matches this model"
            )
        return face

    def _check_dialogue(self, turns: Sequence[DialogueTurn], prefix: PrefixCache, past_labels: str) -> None:
        if not turns:
            raise ValueError("the dialogue has no turns; nothing to label")
        if past_labels not in PAST_LABELS:
            raise ValueError(f"past_labels must be one of {', '.join(PAST_LABELS)}, got {past_labels!r}")
        if prefix.labelled != (past_labels != "none"):
            raise ValueError(
                f"the prefix was encoded for {'' if prefix.labelled else 'un'}labelled past turns but "
                f"past_labels={past_labels!r}; encode the prefix with the same past_labels"
            )
        later = {"none": 0, "gold": 1, "predicted": self.n_labels}[past_labels]
        if any(len(t.later) != later for t in turns[:-1]):
            raise ValueError(
                f"past_labels={past_labels!r} needs {later} later line(s) on every past turn (the line "
                "with its gold label, or one per candidate for predicted labels)"
            )

    def _decode(self, x: Tensor, allowed: Tensor, positions: Tensor, cache: DynamicCache | None) -> Tensor:
        """Last hidden states [B, Q, d]; `allowed[b, q, k]` says whether query q sees key k."""
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        mask.masked_fill_(~allowed.to(x.device), torch.finfo(x.dtype).min)
        return self.lm.get_decoder()(
            inputs_embeds=x,
            attention_mask=mask[:, None],
            position_ids=positions.to(x.device),
            cache=cache,
            use_cache=cache is not None,
        ).last_hidden_state

    def _run(
        self, x: Tensor, allowed: Tensor, positions: Tensor, cache: DynamicCache | None, keep: int
    ) -> Tensor:
        """LM logits of the last `keep` positions."""
        return self.lm.get_output_embeddings()(self._decode(x, allowed, positions, cache)[:, -keep:])

    def _appending(self, cache: DynamicCache, q: int) -> tuple[Tensor, Tensor]:
        """Mask [1, q, past + q] and positions [1, q] for q new tokens after a single-row cache."""
        past = cache.get_seq_length()
        allowed = torch.ones(q, past + q, dtype=torch.bool).tril(diagonal=past)[None]
        return allowed, torch.arange(past, past + q)[None]

    def _extend(self, cache: DynamicCache, x: Tensor) -> Tensor:
        """Append [1, Q, d] embeddings to a single-row cache; logits of the last position."""
        return self._run(x, *self._appending(cache, x.shape[1]), cache, keep=1)

    @cached_property
    def _fed(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The candidate tokens fed after a prompt: owner label, offset in its label, token, next token."""
        fed = [(j, i, c[i], c[i + 1]) for j, c in enumerate(self.candidates) for i in range(len(c) - 1)]
        return tuple(torch.tensor(col) for col in zip(*fed))

    def _candidate_tree(self) -> Tensor:
        """[F, F]: each candidate token sees its own label's earlier tokens."""
        owner, offset = self._fed[:2]
        return (owner[:, None] == owner[None, :]) & (offset[None, :] <= offset[:, None])

    def _candidate_block(self, q: int) -> Tensor:
        """[q + F, q + F] mask of a q-token prompt followed by the F candidate tokens: the prompt is
        causal, and each candidate token sees the whole prompt and its own label's earlier tokens."""
        f = len(self._fed[0])
        block = torch.ones(q + f, q + f, dtype=torch.bool).tril()
        block[q:, q:] = self._candidate_tree()
        return block

    def _label_logprobs(self, hidden: Tensor) -> Tensor:
        """[B, n_labels] from the hidden states [B, 1 + F, d] of each prompt's last token and the
        candidate tokens after it (plus the label bias: every scoring path comes through here)."""
        owner, _, _, target = self._fed
        logits = self.lm.get_output_embeddings()(hidden).float().log_softmax(-1)
        steps = logits[:, 1 + torch.arange(len(owner), device=self.device), target.to(self.device)]
        per_label = torch.zeros(len(owner), len(self.candidates), device=self.device)
        per_label[torch.arange(len(owner), device=self.device), owner.to(self.device)] = 1.0
        first = torch.tensor([c[0] for c in self.candidates], device=self.device)
        scores = logits[:, 0, first] + steps @ per_label
        if self.config.label_bias:
            scores = scores + torch.tensor(self.config.label_bias, device=self.device)
        return scores

    def _score(self, x: Tensor, allowed: Tensor, positions: Tensor) -> Tensor:
        """[B, n_labels] log-probs of every candidate continuation of the left-padded prompts `x`.

        The candidate tokens ride in the same pass after each prompt, seeing all that its last token
        sees plus their own label's earlier tokens, at the positions right after it."""
        batch, q = x.shape[:2]
        _, offset, token, _ = self._fed
        allowed = allowed.cpu()
        allowed = torch.cat(
            [
                torch.cat([allowed, torch.zeros(batch, q, len(offset), dtype=torch.bool)], dim=-1),
                torch.cat(
                    [
                        allowed[:, -1:].expand(-1, len(offset), -1),
                        self._candidate_tree().expand(batch, -1, -1),
                    ],
                    dim=-1,
                ),
            ],
            dim=1,
        )
        positions = torch.cat([positions.cpu(), positions[:, -1:].cpu() + 1 + offset[None, :]], dim=1)
        candidates = self.lm.get_input_embeddings()(token.to(self.device))
        x = torch.cat([x, candidates[None].expand(batch, -1, -1)], dim=1)
        return self._label_logprobs(self._decode(x, allowed, positions, None)[:, -len(offset) - 1 :])

    def _score_branches(
        self, trunk: Tensor, branches: Sequence[tuple[int, Tensor]], cache: DynamicCache
    ) -> Tensor:
        """[len(branches), n_labels] log-probs of every candidate after each branch, in one pass.

        `trunk` [T, d] is appended to the cache and kept. Branch (seen, x) sees the cache, the first
        `seen` trunk tokens and its own tokens, at the positions right after them, followed by the
        candidate tokens (`_candidate_block`); no branch sees another, and all are cropped off."""
        past, kept = cache.get_seq_length(), len(trunk)
        _, offset, token, _ = self._fed
        candidates = self.lm.get_input_embeddings()(token.to(self.device))
        parts, spans, size = [trunk], [], kept
        for seen, x in branches:
            spans.append((size, len(x), seen))
            parts += [x, candidates]
            size += len(x) + len(offset)
        allowed = torch.zeros(size, past + size, dtype=torch.bool)
        allowed[:, :past] = True
        allowed[:kept, past : past + kept] = torch.ones(kept, kept, dtype=torch.bool).tril()
        positions = past + torch.arange(size)
        for begin, q, seen in spans:
            end = begin + q + len(offset)
            allowed[begin:end, past : past + seen] = True
            allowed[begin:end, past + begin : past + end] = self._candidate_block(q)
            positions[begin:end] = past + seen + torch.cat([torch.arange(q), q + offset])
        hidden = self._decode(torch.cat(parts)[None], allowed[None], positions[None], cache)[0]
        cache.crop(kept - size)
        last = torch.tensor([begin + q - 1 for begin, q, _ in spans])
        at = last[:, None] + torch.arange(len(offset) + 1)[None]
        return self._label_logprobs(hidden[at.to(hidden.device)])


class _DialogueContext:
    """A dialogue's KV cache while it is labelled: the prefix, then the kept lines from the window
    start on; `lines` holds every turn's line as later turns see it, cached or not yet."""

    def __init__(self, farcer: Farcer, prefix: PrefixCache):
        self.farcer, self.prefix = farcer, prefix
        self.lines: list[Tensor] = []
        self.start = self.cached = 0
        self.cache = prefix.copy(farcer.lm.config)

    def score(self, start: int, branches: Sequence[tuple[int, Tensor]]) -> Tensor:
        """Scores of branches (seen, x) that each see lines[start:seen]; the lines they see join the
        cache. A new window start re-encodes the kept lines on a fresh copy of the prefix."""
        if start != self.start:
            self.cache, self.start, self.cached = self.prefix.copy(self.farcer.lm.config), start, start
        stop = max(seen for seen, _ in branches)
        new = self.lines[self.cached : stop]
        ends = list(accumulate((len(line) for line in new), initial=0))  # trunk tokens before each line
        trunk = torch.cat([self.farcer.embed(Tokens()), *new])
        scores = self.farcer._score_branches(
            trunk, [(ends[seen - self.cached], x) for seen, x in branches], self.cache
        )
        self.cached = stop
        return scores


@dataclass
class Packed:
    """A training row from `Farcer.pack`: embeddings, tree mask, positions, and where the answers and
    the dialogue text are predicted (index of the predicting position, target id)."""

    x: Tensor
    allowed: Tensor
    positions: Tensor
    label_at: Tensor
    label_ids: Tensor
    text_at: Tensor
    text_ids: Tensor


def _padded(rows: Sequence[Packed]) -> tuple[Tensor, Tensor, Tensor]:
    """The rows right-padded to the longest: x [B, L, d], allowed [B, L, L], positions [B, L]."""
    longest = max(len(r.x) for r in rows)
    x = torch.stack([F.pad(r.x, (0, 0, 0, longest - len(r.x))) for r in rows])
    allowed = torch.stack([F.pad(r.allowed, (0, longest - len(r.x), 0, longest - len(r.x))) for r in rows])
    positions = torch.stack([F.pad(r.positions, (0, longest - len(r.x))) for r in rows])
    return x, allowed, positions


class _Window:
    """Which past turns fit: the oldest are dropped (never the prefix) once the context is full; the
    start only moves forward, so incremental and from-scratch labelling see the same turns."""

    def __init__(self, max_context: int, prefix_tokens: int):
        self.max_context, self.prefix_tokens = max_context, prefix_tokens
        self.start, self.moved, self.first_short = 0, False, None

    def advance(self, past_lengths: Sequence[int], need: int) -> int:
        budget = self.max_context - self.prefix_tokens - need
        if budget < 0:
            raise ValueError(
                f"turn {len(past_lengths)} alone needs {self.prefix_tokens + need} tokens with the instructions and "
                f"examples, more than the model context of {self.max_context}; use fewer shots or shorten the turn"
            )
        start = self.start
        while sum(past_lengths[start:]) > budget:
            start += 1
        self.moved = start != self.start
        if self.moved and self.first_short is None:
            self.first_short = len(past_lengths)
        self.start = start
        return start

    def warning(self) -> str | None:
        if self.first_short is None:
            return None
        return (
            f"the dialogue is longer than the model context ({self.max_context} tokens): from turn "
            f"{self.first_short} on the oldest past turns were dropped ({self.start} in all by the last turn); "
            "the instructions and examples were kept"
        )


def _left_pad(embeds: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack [L_i, d] rows padded on the left: embeddings, key validity [B, L], position ids [B, L]."""
    longest = max(len(e) for e in embeds)
    x = torch.stack([F.pad(e, (0, 0, longest - len(e), 0)) for e in embeds])
    valid = torch.stack([torch.arange(longest) >= longest - len(e) for e in embeds])
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    return x, valid, positions


def _causal(valid: Tensor) -> Tensor:
    """[B, L, L]: each position sees the valid positions up to itself."""
    longest = valid.shape[1]
    return torch.ones(longest, longest, dtype=torch.bool).tril()[None] & valid[:, None, :]


def _later(turn: DialogueTurn, past_labels: str, predicted: int | None) -> Tokens:
    """Turn's line as later turns see it: as it is, with its gold label, or with the predicted one."""
    if past_labels == "none":
        return turn.line
    return turn.later[0] if past_labels == "gold" else turn.later[predicted]


def apply_lora(
    farcer: Farcer,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.1,
    targets: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
    layers: int = 0,
) -> Farcer:
    """Add LoRA adapters to the LM in place (on the last `layers` decoder layers, or on all with 0);
    only they (and the projector) train. Their dropout follows the module's train/eval mode, which
    nothing here overrides."""
    from peft import LoraConfig, inject_adapter_in_model

    depth = len(farcer.lm.get_decoder().layers)
    if not 0 <= layers <= depth:
        raise ValueError(f"the LM has {depth} decoder layers; LoRA cannot go on the last {layers}")
    top = {"layers_to_transform": list(range(depth - layers, depth))} if layers else {}
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), **top)
    inject_adapter_in_model(config, farcer.lm)
    for name, param in farcer.lm.named_parameters():
        param.requires_grad_("lora_" in name)
    farcer.config = replace(
        farcer.config, lora_r=r, lora_alpha=alpha, lora_dropout=dropout, lora_targets=tuple(targets),
        lora_layers=layers,
    )
    return farcer
