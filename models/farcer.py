"""FARCER: a causal LM that reads a dialogue with a projected face vector before each utterance.

Input embeddings are assembled from prompt segments (farcer_prompt): text through the LM's embedding
table, image slots through the modality projector. A label is scored as log P(label tokens + end of
turn | prompt) for every candidate at once; every-turn labelling extends one KV cache pass by pass on
top of a cached instructions + examples prefix, each pass appending up to 16 turns and asking each
turn's label on a branch it crops off.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache

from backend.dialogue import Turn
from backend.errors import InputError, ModelUnavailableError
from backend.labels import MELD7
from models.farcer_prompt import (
    ChatFormat,
    Example,
    Image,
    PastLabels,
    Prompt,
    Segment,
    past_turn_labels,
    prefix_segments,
    query_segments,
    turn_segments,
)

ProjectorKind = Literal["base", "three-layer"]


@dataclass
class FarcerConfig:
    lm: str = "meta-llama/Meta-Llama-3-8B-Instruct"
    vision: str = "trpakov/vit-face-expression"
    image_dim: int = 768
    projector: ProjectorKind = "base"
    dropout: float = 0.05
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    max_context: int = 8192
    labels: tuple[str, ...] = MELD7


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
            raise InputError(f"unknown projector {kind!r}; choose 'base' or 'three-layer'")
        self.kind = kind
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class PrefixCache:
    """The encoded instructions + examples; shared read-only by every dialogue labelled on top of it."""

    cache: DynamicCache
    segments: list[Segment]
    labelled: bool  # whether it was built for past labels (gold or predicted) on the dialogue lines

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    def copy(self, config: Any) -> DynamicCache:
        # Cache updates concatenate into new tensors and crops slice, so sharing the tensors is safe.
        return DynamicCache([(layer.keys, layer.values) for layer in self.cache.layers], config=config)


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


def chat_format(tokenizer: Any) -> ChatFormat:
    """The tokenizer's chat template as a ChatFormat, or a plain one ending answers with EOS."""
    if getattr(tokenizer, "chat_template", None):
        return ChatFormat.from_template(partial(tokenizer.apply_chat_template, tokenize=False))
    if tokenizer.eos_token is None:
        raise InputError("the tokenizer has neither a chat template nor an EOS token to end answers with")
    return ChatFormat(assistant_end=tokenizer.eos_token)


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


class Farcer(nn.Module):
    def __init__(self, lm: nn.Module, tokenizer: Any, config: FarcerConfig):
        super().__init__()
        self.config = config
        self.lm = lm.requires_grad_(False)
        self.tokenizer = tokenizer
        table = lm.get_input_embeddings()
        self.projector = ModalityProjector(
            config.image_dim, table.embedding_dim, config.projector, config.dropout
        )
        self.projector.to(table.weight.device)
        self.chat = chat_format(tokenizer)
        self.max_context = min(
            config.max_context, getattr(lm.config, "max_position_embeddings", config.max_context)
        )
        self._token_ids: dict[str, list[int]] = {}
        self.candidates = [
            self.token_ids(label) + self.token_ids(self.chat.assistant_end) for label in config.labels
        ]
        self._check_candidates()
        self.token_weights: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    def token_ids(self, text: str) -> list[int]:
        if text not in self._token_ids:
            self._token_ids[text] = self.tokenizer.encode(text, add_special_tokens=False)
        return self._token_ids[text]

    def n_tokens(self, segments: Sequence[Segment]) -> int:
        return sum(1 if isinstance(s, Image) else len(self.token_ids(s.text)) for s in segments)

    def set_label_counts(self, train_label_counts: Mapping[str, int]) -> None:
        """Weight the training loss per token with balanced weights from the training label counts."""
        weights = label_token_weights(
            self.labels, self.tokenizer, train_label_counts, self.chat.assistant_end
        )
        vocab = self.lm.get_output_embeddings().weight.shape[0]
        self.token_weights = torch.ones(vocab, device=self.device)
        self.token_weights[list(weights)] = torch.tensor(list(weights.values()), device=self.device)

    def ids(self, segments: Sequence[Segment]) -> list[int]:
        """The token ids of the segments, -1 for each image slot."""
        return [i for s in segments for i in ([-1] if isinstance(s, Image) else self.token_ids(s.text))]

    def embed(self, segments: Sequence[Segment]) -> Tensor:
        """[L, d]: text tokens through the embedding table, image slots through the projector."""
        ids: list[int] = []
        faces: list[Tensor] = []
        is_image: list[bool] = []
        for seg in segments:
            if isinstance(seg, Image):
                faces.append(self._face(seg.vector))
                is_image.append(True)
            else:
                tokens = self.token_ids(seg.text)
                ids += tokens
                is_image += [False] * len(tokens)
        table = self.lm.get_input_embeddings()
        parts = [table(torch.tensor(ids, dtype=torch.long, device=self.device))]
        if faces:
            parts.append(self.projector(torch.stack(faces)).to(parts[0].dtype))
        image = torch.tensor(is_image, dtype=torch.bool)
        order = torch.empty(len(is_image), dtype=torch.long)
        order[~image] = torch.arange(len(ids))
        order[image] = len(ids) + torch.arange(len(faces))
        return torch.cat(parts)[order.to(self.device)]

    def forward(self, prompts: Sequence[Sequence[Segment]], targets: Sequence[str]) -> Tensor:
        """Teacher-forced training loss: weighted cross-entropy over each target's label + end-of-turn
        tokens (paper eq. 7), all rows in one pass."""
        if len(prompts) != len(targets) or not prompts:
            raise InputError(
                f"got {len(prompts)} prompts and {len(targets)} targets; give one target per prompt"
            )
        answers = [self.candidates[self._label_index(t)] for t in targets]
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
        self,
        turns: Sequence[Turn],
        faces: Sequence[Any] | None,
        targets: Sequence[int],
        shots: Sequence[Example] = (),
        past_labels: PastLabels = "none",
    ) -> Packed:
        """One training row that asks the label of every turn in `targets` at once.

        The trunk is the prefix and the past turns (with their gold labels unless past_labels is
        none); target turn i adds a branch [turn i, label query, answer] that sees the prefix and the
        turns before i at the positions its prompt would have alone (the tree mask of `_score`), so
        the row trains exactly what `label_dialogue` asks, every target in one teacher-forced pass."""
        faces = faces if faces is not None else [None] * len(turns)
        if not targets or len(faces) != len(turns) or any(not 0 <= i < len(turns) for i in targets):
            raise InputError(
                f"pack needs one face (or None) per turn and target indices below {len(turns)}; got "
                f"{len(faces)} faces and targets {list(targets)}"
            )
        last = max(targets)
        shown = past_turn_labels(turns[:last], "none" if past_labels == "none" else "gold")
        prefix = prefix_segments(self.labels, shots, past_labels, self.chat)
        lines = [turn_segments(t, f, lab) for t, f, lab in zip(turns, faces, shown)]
        trunk = [*prefix, *(s for line in lines for s in line)]
        ids = self.ids(trunk)
        ends = list(accumulate((len(self.ids(line)) for line in lines), initial=self.n_tokens(prefix)))
        table = self.lm.get_input_embeddings()
        parts, positions = [self.embed(trunk)], [torch.arange(len(ids))]
        spans, label_at, label_ids = [], [], []
        for i in targets:
            branch = [*turn_segments(turns[i], faces[i]), *query_segments(turns[i].speaker, self.chat)]
            answer = self.candidates[self._label_index(turns[i].label)]
            parts += [self.embed(branch), table(torch.tensor(answer, device=self.device))]
            begin, size = len(ids), len(self.ids(branch)) + len(answer)
            ids += self.ids(branch) + answer
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
        self, rows: Sequence[Packed], text_weight: float = 0.0
    ) -> tuple[Tensor, dict[str, float]]:
        """Weighted label cross-entropy over all rows' answers (+ text_weight x the LM loss on the
        dialogue lines), from one pass over the right-padded batch."""
        longest = max(len(r.x) for r in rows)
        x = torch.stack([F.pad(r.x, (0, 0, 0, longest - len(r.x))) for r in rows])
        allowed = torch.stack(
            [F.pad(r.allowed, (0, longest - len(r.x), 0, longest - len(r.x))) for r in rows]
        )
        positions = torch.stack([F.pad(r.positions, (0, longest - len(r.x))) for r in rows])
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

    @torch.no_grad()
    def label_logprobs(self, prompts: Sequence[Sequence[Segment]]) -> Tensor:
        """[B, n_labels] log P(label + end of turn | prompt) for all prompts and candidates in one pass."""
        embeds = [self.embed(p) for p in prompts]
        longest = max(len(e) for e in embeds) + max(len(c) for c in self.candidates)
        if longest > self.max_context:
            raise InputError(
                f"a prompt needs {longest} tokens but the model context is {self.max_context}; shorten the "
                "dialogue or use label_dialogue, which drops the oldest turns"
            )
        x, valid, positions = _left_pad(embeds)
        return self._score(x, _causal(valid), positions)

    def score_labels(self, prompts: Sequence[Sequence[Segment]]) -> Tensor:
        """[B, n_labels] probability of each label, a softmax over the label sequence log-probs."""
        return self.label_logprobs(prompts).softmax(-1)

    @torch.no_grad()
    def greedy_label(self, segments: Sequence[Segment]) -> tuple[list[int], str | None]:
        """Greedy decoding (paper eq. 8): the generated ids, and the label they spell (None if none)."""
        cache = DynamicCache(config=self.lm.config)
        x = self.embed(segments)[None]
        generated: list[int] = []
        eot = self.token_ids(self.chat.assistant_end)
        table = self.lm.get_input_embeddings()
        while len(generated) < self._longest_answer:
            generated.append(int(self._extend(cache, x)[0, -1].argmax()))
            if generated[-len(eot) :] == eot:
                break
            x = table(torch.tensor([generated[-1:]], device=self.device))
        label = next((lab for lab, c in zip(self.labels, self.candidates) if c == generated), None)
        return generated, label

    @torch.no_grad()
    def encode_prefix(self, shots: Sequence[Example] = (), past_labels: PastLabels = "none") -> PrefixCache:
        """Encode instructions + examples once; reuse the result for any number of dialogues."""
        segments = prefix_segments(self.labels, shots, past_labels, self.chat)
        cache = DynamicCache(config=self.lm.config)
        self._extend(cache, self.embed(segments)[None])
        return PrefixCache(cache, segments, labelled=past_labels != "none")

    @torch.no_grad()
    def label_dialogue(
        self,
        turns: Sequence[Turn],
        faces: Sequence[Any] | None,
        prefix: PrefixCache,
        past_labels: PastLabels = "none",
        turns_per_pass: int = 16,
    ) -> DialogueLabels:
        """Label every turn on top of the cached prefix, extending one KV cache pass by pass.

        A pass appends the lines of up to `turns_per_pass` turns to the cache and asks each of those
        turns' label on its own branch, which sees exactly the lines its own prompt holds and is cropped
        off after the pass. Past turns carry no label, the gold one, or the model's own argmax; with
        predicted labels a turn's line exists only after its label does, so every pass holds one turn."""
        faces = self._check_dialogue(turns, faces, prefix, past_labels)
        if turns_per_pass < 1:
            raise InputError(f"turns_per_pass must be at least 1, got {turns_per_pass}")
        context = _DialogueContext(self, prefix)
        window = _Window(self.max_context, prefix.length)
        scores: list[Tensor] = []
        starts: list[int] = []
        waiting: list[tuple[int, Tensor]] = []  # branches for the next pass: (lines seen, embeddings)

        def run_pass() -> None:
            scores.extend(context.score(starts[-1], waiting))
            waiting.clear()

        for i, turn in enumerate(turns):
            current = self.embed(turn_segments(turn, faces[i]))
            query = self.embed(query_segments(turn.speaker, self.chat))
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
            label = turn.label if past_labels == "gold" else self.labels[int(scores[-1].argmax())]
            context.lines.append(self.embed(turn_segments(turn, faces[i], label)))
        if waiting:
            run_pass()
        predicted = [self.labels[int(row.argmax())] for row in scores]
        return DialogueLabels(torch.stack(scores), predicted, window.warning(), starts)

    @torch.no_grad()
    def label_dialogue_naive(
        self,
        turns: Sequence[Turn],
        faces: Sequence[Any] | None,
        prefix: PrefixCache,
        past_labels: PastLabels = "none",
    ) -> DialogueLabels:
        """`label_dialogue` re-encoding the whole prompt from scratch for every turn (the reference)."""
        faces = self._check_dialogue(turns, faces, prefix, past_labels)
        window = _Window(self.max_context, self.n_tokens(prefix.segments))
        scores, predicted, starts = [], [], []
        for i, turn in enumerate(turns):
            gold_or_predicted = past_turn_labels(turns[:i], past_labels, predicted)
            lines = [turn_segments(t, f, lab) for t, f, lab in zip(turns[:i], faces[:i], gold_or_predicted)]
            current = turn_segments(turn, faces[i])
            query = query_segments(turn.speaker, self.chat)
            need = self.n_tokens(current) + self.n_tokens(query) + self._longest_answer
            start = window.advance([self.n_tokens(line) for line in lines], need)
            starts.append(start)
            prompt = Prompt(prefix.segments, [*lines[start:], current], query)
            scores.append(self.label_logprobs([prompt.segments])[0])
            predicted.append(self.labels[int(scores[-1].argmax())])
        return DialogueLabels(torch.stack(scores), predicted, window.warning(), starts)

    @property
    def _longest_answer(self) -> int:
        return max(len(c) for c in self.candidates)

    def _label_index(self, label: str) -> int:
        if label not in self.labels:
            raise InputError(f"unknown target label {label!r}; expected one of {', '.join(self.labels)}")
        return self.labels.index(label)

    def _face(self, vector: Any) -> Tensor:
        face = torch.as_tensor(vector, dtype=torch.float32, device=self.device)
        if face.shape != (self.config.image_dim,):
            raise InputError(
                f"face vector has shape {tuple(face.shape)}, expected ({self.config.image_dim},); "
                "use the face encoder that matches this model"
            )
        return face

    def _check_candidates(self) -> None:
        if not self.token_ids(self.chat.assistant_end):
            raise InputError(
                "the chat format's end of turn tokenizes to nothing; FARCER needs an end-of-turn token"
            )
        unk = getattr(self.tokenizer, "unk_token_id", None)
        for label, ids in zip(self.labels, self.candidates):
            if unk is not None and unk in ids:
                raise InputError(
                    f"label {label!r} is not in the tokenizer's vocabulary; use another label set"
                )
        if len({tuple(c) for c in self.candidates}) < len(self.candidates):
            raise InputError("two labels tokenize to the same ids; the tokenizer cannot tell them apart")

    def _check_dialogue(
        self, turns: Sequence[Turn], faces: Sequence[Any] | None, prefix: PrefixCache, past_labels: str
    ) -> Sequence[Any]:
        if not turns:
            raise InputError("the dialogue has no turns; nothing to label")
        faces = faces if faces is not None else [None] * len(turns)
        if len(faces) != len(turns):
            raise InputError(
                f"got {len(faces)} faces for {len(turns)} turns; give one per turn (None for no face)"
            )
        if prefix.labelled != (past_labels != "none"):
            raise InputError(
                f"the prefix was encoded for {'labelled' if prefix.labelled else 'unlabelled'} past turns but "
                f"past_labels={past_labels!r}; encode the prefix with the same past_labels"
            )
        past_turn_labels(
            turns[:-1], past_labels, predicted=[""] * len(turns)
        )  # gold labels present if needed
        return faces

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
        candidate tokens after it."""
        owner, _, _, target = self._fed
        logits = self.lm.get_output_embeddings()(hidden).float().log_softmax(-1)
        steps = logits[:, 1 + torch.arange(len(owner), device=self.device), target.to(self.device)]
        per_label = torch.zeros(len(owner), len(self.candidates), device=self.device)
        per_label[torch.arange(len(owner), device=self.device), owner.to(self.device)] = 1.0
        first = torch.tensor([c[0] for c in self.candidates], device=self.device)
        return logits[:, 0, first] + steps @ per_label

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
        trunk = torch.cat([self.farcer.embed([]), *new])
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


class _Window:
    """Which past turns fit: the oldest are dropped (never the prefix) once the context is full; the
    start only moves forward, so incremental and from-scratch labelling see the same turns."""

    def __init__(self, max_context: int, prefix_tokens: int):
        self.max_context, self.prefix_tokens = max_context, prefix_tokens
        self.start, self.moved, self.first_short = 0, False, None

    def advance(self, past_lengths: Sequence[int], need: int) -> int:
        budget = self.max_context - self.prefix_tokens - need
        if budget < 0:
            raise InputError(
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


def apply_lora(
    farcer: Farcer,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.1,
    targets: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
) -> Farcer:
    """Add LoRA adapters to the LM in place; only they (and the projector) train. Their dropout follows
    the module's train/eval mode, which nothing here overrides."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets))
    inject_adapter_in_model(config, farcer.lm)
    for name, param in farcer.lm.named_parameters():
        param.requires_grad_("lora_" in name)
    farcer.config = replace(
        farcer.config, lora_r=r, lora_alpha=alpha, lora_dropout=dropout, lora_targets=tuple(targets)
    )
    return farcer


def save_trainable(farcer: Farcer, path: str | os.PathLike) -> None:
    """Save what training changes: the whole projector and the LoRA adapters (if any), as safetensors."""
    from safetensors.torch import save_file

    tensors = {f"projector.{k}": v for k, v in farcer.projector.state_dict().items()}
    tensors |= {f"lm.{k}": v for k, v in farcer.lm.state_dict().items() if "lora_" in k}
    meta = {"projector": farcer.projector.kind, "image_dim": str(farcer.config.image_dim)}
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def load_trainable(farcer: Farcer, path: str | os.PathLike) -> None:
    """Load a `save_trainable` file into a Farcer built the same way (apply_lora first for adapters)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise InputError(f"FARCER checkpoint {path} does not exist; train one or check the path")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("projector") != farcer.projector.kind or meta.get("image_dim") != str(
        farcer.config.image_dim
    ):
        raise InputError(
            f"{path} holds a {meta.get('projector')} projector for {meta.get('image_dim')}-d faces but the model has a "
            f"{farcer.projector.kind} one for {farcer.config.image_dim}-d faces; build the model with the same config"
        )
    tensors = load_file(str(path), device=str(farcer.device))
    farcer.projector.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("projector.")})
    lora = {k[3:]: v for k, v in tensors.items() if k.startswith("lm.")}
    own = {k for k in farcer.lm.state_dict() if "lora_" in k}
    if set(lora) != own:
        raise InputError(
            f"{path} has {len(lora)} adapter tensors but the model has {len(own)}; "
            "call apply_lora with the same settings before loading (or not, for a projector-only checkpoint)"
        )
    farcer.lm.load_state_dict(lora, strict=False)


@dataclass
class FaceEncoder:
    """A ViT face model; a face's feature is the CLS token of the last hidden state."""

    model: nn.Module
    processor: Any

    @torch.no_grad()
    def __call__(self, images: Sequence[Any]) -> Tensor:
        """[N, hidden] features of RGB images (arrays HxWx3 or PIL images)."""
        device = next(self.model.parameters()).device
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(device)
        return self.model(pixel_values=pixels).last_hidden_state[:, 0].float()


def load_paper_farcer(
    lm: str = "meta-llama/Meta-Llama-3-8B-Instruct",
    vision: str = "trpakov/vit-face-expression",
    config: FarcerConfig | None = None,
    device: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> tuple[Farcer, FaceEncoder]:
    """The paper profile: a causal LM + tokenizer and a ViT face encoder (hub names or local paths),
    frozen; ModelUnavailableError when either is neither local nor downloadable."""
    faces = load_face_encoder(vision, device)
    config = replace(config or FarcerConfig(), vision=vision, image_dim=faces.model.config.hidden_size)
    return load_farcer_lm(lm, config, device, dtype), faces


def load_farcer_lm(
    lm: str,
    config: FarcerConfig | None = None,
    device: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Farcer:
    """A Farcer (fresh projector) around a Hugging Face causal LM and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = _load(AutoTokenizer.from_pretrained, lm, "tokenizer")
    model = _load(AutoModelForCausalLM.from_pretrained, lm, "language model", dtype=dtype)
    config = replace(config or FarcerConfig(), lm=lm)
    return Farcer(model.to(device or _default_device()).eval(), tokenizer, config).eval()


def load_face_encoder(vision: str = "trpakov/vit-face-expression", device: str | None = None) -> FaceEncoder:
    from transformers import ViTImageProcessorPil, ViTModel

    vit = _load(ViTModel.from_pretrained, vision, "face encoder", add_pooling_layer=False)
    processor = _load(ViTImageProcessorPil.from_pretrained, vision, "face image processor")
    return FaceEncoder(vit.to(device or _default_device()).eval().requires_grad_(False), processor)


def _default_device() -> str:
    from backend.settings import get_settings

    return get_settings().torch_device()


def _load(loader: Callable[..., Any], name: str, what: str, **kwargs: Any) -> Any:
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise ModelUnavailableError(
            f"FARCER {what} {name!r} is not available{' (offline: HF_HUB_OFFLINE is set)' if offline else ''}: "
            f"{type(e).__name__}. Put it in the Hugging Face cache (huggingface-cli download {name}) or pass a local "
            "directory, or use the offline profile."
        ) from e
