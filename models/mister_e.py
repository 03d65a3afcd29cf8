"""MiSTER-E stage 2: speech, text and cross-modal experts over utterance embeddings, mixed by a gate.

Follows /work/shared/papers/mister-e-notes.md (the authors' release), with padding and missing
modalities masked everywhere. Every [..., 3] tensor orders the experts as in EXPERTS.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

EXPERTS = ("speech", "text", "cross")


@dataclass
class MisterEConfig:
    n_labels: int
    speech_dim: int = 2048
    text_dim: int = 2048
    context_channels: int = 1024
    context_kernels: tuple[int, ...] = (1, 3, 5)
    gru_hidden: int = 512
    gru_layers: int = 3
    cross_dim: int = 1024
    attn_width: int = 120
    attn_heads: int = 3
    cross_blocks: int = 4
    attn_dropout: float = 0.1
    dropout: float = 0.5
    ln_eps: float = 1e-6
    gate_hidden: int = 10
    gate_temperature: float = 2.0
    focal_gamma: float = 3.0
    supcon_weight: float = 2.0
    supcon_temperature: float = 1.0
    kl_weight: float = 0.1

    def __post_init__(self) -> None:
        self.context_kernels = tuple(self.context_kernels)
        sizes = ("n_labels", "speech_dim", "text_dim", "context_channels", "gru_hidden", "gru_layers",
                 "cross_dim", "attn_width", "attn_heads", "cross_blocks", "gate_hidden")
        bad = [name for name in sizes if getattr(self, name) < 1]
        if bad:
            raise ValueError(f"MisterEConfig sizes must be positive: {', '.join(bad)}")
        if not self.context_kernels or any(k < 1 or k % 2 == 0 for k in self.context_kernels):
            raise ValueError(f"context_kernels must be odd and positive for 'same' padding, "
                             f"got {self.context_kernels}")
        if self.attn_width % self.attn_heads:
            raise ValueError(f"attn_width {self.attn_width} is not divisible by attn_heads {self.attn_heads}")
        if self.gate_temperature <= 0 or self.supcon_temperature <= 0:
            raise ValueError("gate_temperature and supcon_temperature must be positive")

    @classmethod
    def paper(cls, n_labels: int, speech_dim: int = 2048, text_dim: int = 2048) -> "MisterEConfig":
        """The sizes of the authors' release."""
        return cls(n_labels=n_labels, speech_dim=speech_dim, text_dim=text_dim)

    @classmethod
    def small(cls, n_labels: int, speech_dim: int, text_dim: int) -> "MisterEConfig":
        """A CPU-sized model for the offline profile's small encoders."""
        return cls(n_labels=n_labels, speech_dim=speech_dim, text_dim=text_dim, context_channels=256,
                   gru_hidden=128, gru_layers=2, cross_dim=256, cross_blocks=2)

    @classmethod
    def tiny(cls, n_labels: int, speech_dim: int = 12, text_dim: int = 10) -> "MisterEConfig":
        """A few-thousand-parameter model for tests."""
        return cls(n_labels=n_labels, speech_dim=speech_dim, text_dim=text_dim, context_channels=16,
                   gru_hidden=8, gru_layers=2, cross_dim=16, attn_width=8, attn_heads=2, cross_blocks=1)

    def to_dict(self) -> dict:
        config = asdict(self)
        config["context_kernels"] = list(self.context_kernels)
        return config

    @classmethod
    def from_dict(cls, config: dict) -> "MisterEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown MisterEConfig keys: {', '.join(unknown)}")
        if "n_labels" not in config:
            raise ValueError("MisterEConfig needs n_labels")
        return cls(**config)


@dataclass
class MisterEOutput:
    logits: Tensor  # [B, T, C] gate-mixed logits
    expert_logits: dict[str, Tensor]  # name in EXPERTS -> [B, T, C], zero where the expert is unavailable
    gate: Tensor  # [B, T, 3] expert weights, exactly 0 for unavailable experts and padded turns
    z_speech: Tensor  # [B, T, cross_dim] cross-modal speech stream, for the contrastive loss
    z_text: Tensor  # [B, T, cross_dim]
    available: Tensor  # [B, T, 3] bool: the expert has its inputs on this real turn


class ContextExpert(nn.Module):
    """One modality's expert: summed multi-kernel convolutions -> BiGRU -> skip of the input -> logits."""

    def __init__(self, in_dim: int, config: MisterEConfig):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(in_dim, config.context_channels, k, padding=k // 2)
                                   for k in config.context_kernels)
        self.gru = nn.GRU(config.context_channels, config.gru_hidden, num_layers=config.gru_layers,
                          bidirectional=True, batch_first=True)
        self.skip = nn.Linear(in_dim, 2 * config.gru_hidden)
        self.head = nn.Linear(2 * config.gru_hidden, config.n_labels)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, T, in], mask [B, T] with real turns first -> logits [B, T, C], zero on padding."""
        keep = mask[..., None]
        x = torch.where(keep, x, 0.0)  # the convolutions' receptive field reaches into the padding
        h = x.transpose(1, 2)
        h = sum(F.relu(conv(h)) for conv in self.convs).transpose(1, 2)
        h = torch.where(keep, h, 0.0)
        lengths = mask.sum(1).cpu()
        packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        h, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.size(1))
        return torch.where(keep, self.head(h + self.skip(x)), 0.0)


class AttentionLayer(nn.Module):
    """Queries from one stream attend to another (or the same) stream; post-LN residual."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        d, a = config.cross_dim, config.attn_width
        self.q, self.k, self.v = nn.Linear(d, a), nn.Linear(d, a), nn.Linear(d, a)
        self.attn = nn.MultiheadAttention(a, config.attn_heads, dropout=config.attn_dropout, batch_first=True)
        self.proj = nn.Linear(a, d)
        self.drop = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(d, eps=config.ln_eps)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        # A dialogue missing the context modality on every turn has no key; let it attend to all its
        # (zeroed) turns so no attention backend sees a fully masked row (NaN in some fused kernels).
        # Its cross expert is unavailable on every turn anyway.
        ignore = ~(context_mask | ~context_mask.any(1, keepdim=True))
        out, _ = self.attn(self.q(x), self.k(context), self.v(context), key_padding_mask=ignore,
                           need_weights=False)
        return self.norm(x + self.drop(self.proj(out)))


class CoAttentionBlock(nn.Module):
    """Cross-attention both ways (text <- speech, speech <- text), then self-attention per modality."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        self.speech_from_text = AttentionLayer(config)
        self.text_from_speech = AttentionLayer(config)
        self.speech_self = AttentionLayer(config)
        self.text_self = AttentionLayer(config)

    def forward(self, s: Tensor, t: Tensor, s_mask: Tensor, t_mask: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.speech_from_text(s, t, t_mask), self.text_from_speech(t, s, s_mask)
        return self.speech_self(s, s, s_mask), self.text_self(t, t, t_mask)


class CrossModalExpert(nn.Module):
    """Co-attention over the whole conversation; returns logits and the two streams Z_speech, Z_text."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        d = config.cross_dim
        self.speech_in = nn.Linear(config.speech_dim, d)
        self.text_in = nn.Linear(config.text_dim, d)
        self.blocks = nn.ModuleList(CoAttentionBlock(config) for _ in range(config.cross_blocks))
        self.speech_skip = nn.Linear(config.speech_dim, d)
        self.text_skip = nn.Linear(config.text_dim, d)
        self.head = nn.Sequential(nn.LayerNorm(2 * d, eps=config.ln_eps), nn.Linear(2 * d, d), nn.ReLU(),
                                  nn.Linear(d, config.n_labels))

    def forward(self, speech: Tensor, text: Tensor, speech_mask: Tensor,
                text_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """speech_mask/text_mask [B, T]: turns whose speech/text may be attended to."""
        s, t = self.speech_in(speech), self.text_in(text)
        for block in self.blocks:
            s, t = block(s, t, speech_mask, text_mask)
        z_speech, z_text = s + self.speech_skip(speech), t + self.text_skip(text)
        return self.head(torch.cat([z_speech, z_text], -1)), z_speech, z_text


class Gate(nn.Module):
    """Per-turn softmax weights over the available experts, computed from the experts' logits."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * config.n_labels, config.gate_hidden), nn.ReLU(),
                                 nn.Linear(config.gate_hidden, 3))
        self.temperature = config.gate_temperature

    def forward(self, expert_logits: Tensor, available: Tensor) -> Tensor:
        """expert_logits [B, T, 3, C] (zero where unavailable), available [B, T, 3] -> weights [B, T, 3]."""
        scores = self.net(expert_logits.flatten(-2)) / self.temperature
        scores = scores.masked_fill(~available, float("-inf"))
        # Padded turns have no expert at all: keep their softmax finite, their weights are zeroed below.
        scores = scores.masked_fill(~available.any(-1, keepdim=True), 0.0)
        return scores.softmax(-1) * available


def availability(mask: Tensor, speech_present: Tensor, text_present: Tensor) -> Tensor:
    """[B, T, 3] bool: speech expert needs speech, text expert needs text, cross needs both."""
    speech, text = speech_present & mask, text_present & mask
    return torch.stack([speech, text, speech & text], -1)


class MisterE(nn.Module):
    def __init__(self, config: MisterEConfig):
        super().__init__()
        self.config = config
        self.speech_expert = ContextExpert(config.speech_dim, config)
        self.text_expert = ContextExpert(config.text_dim, config)
        self.cross_expert = CrossModalExpert(config)
        self.gate = Gate(config)

    def forward(self, speech: Tensor, text: Tensor, mask: Tensor, speech_present: Tensor | None = None,
                text_present: Tensor | None = None) -> MisterEOutput:
        """speech [B, T, Ds], text [B, T, Dt], mask [B, T] bool (real turns first in each row).

        speech_present/text_present [B, T] bool mark turns whose modality is missing (default: all
        present). A missing vector is replaced by zeros and its experts get gate weight 0.
        """
        speech_present = mask if speech_present is None else speech_present
        text_present = mask if text_present is None else text_present
        self._check_inputs(speech, text, mask, speech_present, text_present)
        available = availability(mask, speech_present, text_present)
        has_speech, has_text = available[..., 0], available[..., 1]
        speech = torch.where(has_speech[..., None], speech, 0.0)
        text = torch.where(has_text[..., None], text, 0.0)

        speech_logits = self.speech_expert(speech, mask)
        text_logits = self.text_expert(text, mask)
        cross_logits, z_speech, z_text = self.cross_expert(speech, text, has_speech, has_text)
        stacked = torch.stack([speech_logits, text_logits, cross_logits], 2)
        stacked = torch.where(available[..., None], stacked, 0.0)
        gate = self.gate(stacked, available)
        keep = mask[..., None]
        return MisterEOutput(
            logits=(gate[..., None] * stacked).sum(2),
            expert_logits={name: stacked[:, :, i] for i, name in enumerate(EXPERTS)},
            gate=gate,
            z_speech=torch.where(keep, z_speech, 0.0),
            z_text=torch.where(keep, z_text, 0.0),
            available=available,
        )

    @torch.no_grad()
    def predict(self, speech: Tensor, text: Tensor, mask: Tensor, speech_present: Tensor | None = None,
                text_present: Tensor | None = None) -> dict[str, Tensor]:
        """Eval-mode probabilities [B, T, C] for "mixed" and each expert; all-zero rows where absent."""
        was_training = self.training
        self.eval()
        try:
            out = self(speech, text, mask, speech_present, text_present)
        finally:
            self.train(was_training)
        probs = {"mixed": out.logits.softmax(-1) * out.available.any(-1, keepdim=True)}
        for i, name in enumerate(EXPERTS):
            probs[name] = out.expert_logits[name].softmax(-1) * out.available[..., i, None]
        return probs

    def _check_inputs(self, speech: Tensor, text: Tensor, mask: Tensor, speech_present: Tensor,
                      text_present: Tensor) -> None:
        if speech.dim() != 3 or text.dim() != 3:
            raise ValueError(f"speech and text must be [batch, turns, dim], got {tuple(speech.shape)} "
                             f"and {tuple(text.shape)}")
        if speech.size(-1) != self.config.speech_dim or text.size(-1) != self.config.text_dim:
            raise ValueError(f"embedding sizes {speech.size(-1)}/{text.size(-1)} do not match the model's "
                             f"speech_dim/text_dim {self.config.speech_dim}/{self.config.text_dim}")
        shape = speech.shape[:2]
        for name, t in (("text", text), ("mask", mask), ("speech_present", speech_present),
                        ("text_present", text_present)):
            if t.shape[:2] != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, "
                                 f"expected batch and turns {tuple(shape)}")
        for name, t in (("mask", mask), ("speech_present", speech_present), ("text_present", text_present)):
            if t.dtype != torch.bool or t.dim() != 2:
                raise ValueError(f"{name} must be a [batch, turns] bool tensor, "
                                 f"got {t.dtype} {tuple(t.shape)}")
        lengths = mask.sum(1)
        if (lengths == 0).any():
            raise ValueError("every dialogue in the batch needs at least one real turn")
        if not torch.equal(mask, torch.arange(mask.size(1), device=mask.device) < lengths[:, None]):
            raise ValueError("mask must mark each dialogue's real turns first, then padding")
        empty = mask & ~speech_present & ~text_present
        if empty.any():
            rows, turns = empty.nonzero(as_tuple=True)
            raise ValueError(f"{len(rows)} turn(s) have neither speech nor text (first: dialogue "
                             f"{rows[0].item()}, turn {turns[0].item()}); drop them before the model")


def majority_vote(output: MisterEOutput) -> Tensor:
    """[B, T] class ids by majority of the available experts' argmax (-1 on padded turns).

    A three-way split goes to the cross-modal expert, as in the authors' release.
    """
    stacked = torch.stack([output.expert_logits[name] for name in EXPERTS], 2)
    votes = F.one_hot(stacked.argmax(-1), stacked.size(-1)) * output.available[..., None]
    score = votes.sum(2) + 0.5 * votes[:, :, 2]
    return score.argmax(-1).masked_fill(~output.available.any(-1), -1)
