"""MiSTER-E stage 1: utterance encoders (text, paper speech over the Qwen2-Audio tower, offline speech over pooled features) and LoRA placement.

Each encoder is an utterance classifier whose projection output is the embedding that stage 2
reads: backbone -> LayerNorm -> pooling -> Linear(->E) = embedding -> ReLU -> Dropout -> Linear(E->C).
The backbones come in as built modules; loading them (and the checkpoints) is backend.encoders' job.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn


def _check_sizes(owner: str, sizes: dict[str, int], dropout: float) -> None:
    bad = [name for name, value in sizes.items() if value < 1]
    if bad:
        raise ValueError(f"{owner} sizes must be positive: {', '.join(bad)}")
    if not 0 <= dropout < 1:
        raise ValueError(f"{owner} dropout must be in [0, 1), got {dropout}")


@dataclass
class HeadConfig:
    """The classifier head on top of a pooled backbone state."""

    n_labels: int = 7
    embed_dim: int = 2048
    dropout: float = 0.5

    def __post_init__(self) -> None:
        _check_sizes("HeadConfig", {"n_labels": self.n_labels, "embed_dim": self.embed_dim}, self.dropout)


@dataclass
class FeatureEncoderConfig:
    """The offline speech encoder: a pooled feature vector -> group normalisation -> MLP -> embedding.

    `shrink` is the weight, in clips, of the training statistics in each group's mean and variance
    (a group is one speaker's turns in one dialogue); None normalises with the training statistics only.
    """

    in_dim: int
    n_labels: int = 7
    hidden_dim: int = 256
    embed_dim: int = 128
    dropout: float = 0.5
    shrink: float | None = None

    def __post_init__(self) -> None:
        sizes = {"in_dim": self.in_dim, "n_labels": self.n_labels, "hidden_dim": self.hidden_dim}
        _check_sizes("FeatureEncoderConfig", {**sizes, "embed_dim": self.embed_dim}, self.dropout)
        if self.shrink is not None and self.shrink <= 0:
            raise ValueError(f"FeatureEncoderConfig shrink must be positive or None, got {self.shrink}")


@dataclass
class LoraSpec:
    r: int
    alpha: int
    dropout: float
    target_modules: list[str] | str = field(default_factory=list)


# Paper settings. BERT-style backbones (MiniLM) name their projections query/value; the speech
# adapters sit on the audio tower's attention (the tower is the whole speech backbone here).
TEXT_LORA = LoraSpec(r=8, alpha=32, dropout=0.1, target_modules=["q_proj", "v_proj"])
TEXT_LORA_BERT = LoraSpec(r=8, alpha=32, dropout=0.1, target_modules=["query", "value"])
SPEECH_LORA = LoraSpec(r=16, alpha=8, dropout=0.05, target_modules=["q_proj", "v_proj"])


class AttentiveStatsPooling(nn.Module):
    """h = tanh(W x); score = h . a; softmax over real positions; [weighted mean ; weighted std]."""

    def __init__(self, dim: int, min_var: float = 1e-5):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1, bias=False)
        self.min_var = min_var

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        x = x.masked_fill(~mask[..., None], 0.0)
        scores = self.score(torch.tanh(self.proj(x))).squeeze(-1)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)[..., None]
        mean = (weights * x).sum(dim=1)
        var = (weights * (x - mean[:, None]).pow(2)).sum(dim=1)
        return torch.cat([mean, var.clamp(min=self.min_var).sqrt()], dim=-1)


class MeanPooling(nn.Module):
    """Mean over real (mask=1) positions."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.to(x.dtype)[..., None]
        return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class _Head(nn.Module):
    """Linear(in->E) = embedding -> ReLU -> Dropout -> Linear(E->C)."""

    def __init__(self, in_dim: int, config: HeadConfig | FeatureEncoderConfig):
        super().__init__()
        self.project = nn.Linear(in_dim, config.embed_dim)
        self.classify = nn.Sequential(nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(config.embed_dim, config.n_labels))


def backbone_hidden_size(backbone: nn.Module) -> int:
    """Hidden size of the language model inside `backbone` (the text part of multimodal models)."""
    return backbone.config.get_text_config().hidden_size


class TextUtteranceEncoder(nn.Module):
    """Any HF encoder/decoder -> LayerNorm -> attentive statistics pooling -> head."""

    def __init__(self, backbone: nn.Module, config: HeadConfig):
        super().__init__()
        hidden = backbone_hidden_size(backbone)
        self.config = config
        self.backbone = backbone
        self.norm = nn.LayerNorm(hidden)
        self.pool = AttentiveStatsPooling(hidden)
        self.head = _Head(2 * hidden, config)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        states = self.norm(states.to(self.norm.weight.dtype))
        return self.head.project(self.pool(states, attention_mask))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head.classify(self.embed(input_ids, attention_mask))


class AudioTowerEncoder(nn.Module):
    """Qwen2-Audio's Whisper-style audio tower (LoRA on its attention) -> LayerNorm -> attentive
    statistics pooling over the clip's real frames -> head. Padded mel frames are masked out of the
    tower's attention and of the pooling, so a clip's embedding does not depend on its batch."""

    def __init__(self, tower: nn.Module, config: HeadConfig):
        super().__init__()
        hidden = tower.config.d_model
        self.config = config
        self.backbone = tower
        self.norm = nn.LayerNorm(hidden)
        self.pool = AttentiveStatsPooling(hidden)
        self.head = _Head(2 * hidden, config)

    def embed(self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        dtype = next(self.backbone.parameters()).dtype  # a bf16 tower reads bf16 features and mask
        input_features = input_features.to(dtype)
        conv_lengths, out_lengths = self.backbone._get_feat_extract_output_lengths(feature_attention_mask.sum(-1))
        positions = torch.arange((input_features.shape[-1] - 2) // 2 + 1, device=input_features.device)
        conv_mask = (positions[None] < conv_lengths[:, None]).long()
        attention = create_bidirectional_mask(
            config=self.backbone.config,
            inputs_embeds=torch.zeros(*conv_mask.shape, 1, dtype=dtype, device=conv_mask.device),
            attention_mask=conv_mask,
        )
        states = self.backbone(input_features, attention_mask=attention).last_hidden_state
        states = self.norm(states.to(self.norm.weight.dtype))
        mask = torch.arange(states.shape[1], device=states.device)[None] < out_lengths[:, None]
        return self.head.project(self.pool(states, mask))

    def forward(self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head.classify(self.embed(input_features, feature_attention_mask))


class FeatureSpeechEncoder(nn.Module):
    """Offline speech encoder: pooled feature vector -> normalised per speaker group -> MLP -> head.

    Each group's mean and variance are shrunk toward the training statistics (`config.shrink`
    pseudo-clips of them), so a speaker with one or two turns is mostly normalised globally and one
    with many turns by their own voice.
    """

    def __init__(self, config: FeatureEncoderConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(config.in_dim))
        self.register_buffer("std", torch.ones(config.in_dim))
        self.mlp = nn.Sequential(nn.Linear(config.in_dim, config.hidden_dim), nn.ReLU(), nn.Dropout(config.dropout))
        self.head = _Head(config.hidden_dim, config)

    def set_standardization(self, features: np.ndarray) -> None:
        """Store the per-dimension mean/std of the training features (constant dimensions keep std 1)."""
        data = torch.as_tensor(features, dtype=torch.float32)
        if data.ndim != 2 or data.shape[1] != self.config.in_dim or len(data) == 0:
            raise ValueError(
                f"standardisation needs [n, {self.config.in_dim}] training features, got {tuple(data.shape)}"
            )
        std = data.std(dim=0)
        self.mean.copy_(data.mean(dim=0))
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def normalize(self, features: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """[N, in_dim] features standardised within their groups ([N] ids; None: one group)."""
        if self.config.shrink is None:
            return (features - self.mean) / self.std
        if groups is None:
            groups = torch.zeros(len(features), dtype=torch.long, device=features.device)
        ids, row_group = torch.unique(groups, return_inverse=True)
        k = self.config.shrink
        ones = torch.ones(len(features), dtype=features.dtype, device=features.device)
        count = torch.zeros(len(ids), dtype=features.dtype, device=features.device).index_add_(0, row_group, ones)
        total = torch.zeros(len(ids), features.shape[1], dtype=features.dtype, device=features.device).index_add_(0, row_group, features)
        mean = (total + k * self.mean) / (count + k)[:, None]
        centred = features - mean[row_group]
        spread = torch.zeros_like(total).index_add_(0, row_group, centred.pow(2))
        var = (spread + k * self.std.pow(2)) / (count + k)[:, None]
        return centred / var[row_group].sqrt()

    def embed_normalized(self, normalized: torch.Tensor) -> torch.Tensor:
        return self.head.project(self.mlp(normalized))

    def embed(self, features: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed_normalized(self.normalize(features, groups))

    def forward(self, features: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        return self.head.classify(self.embed(features, groups))


def apply_lora(
    module: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str] | str
) -> nn.Module:
    """Inject LoRA adapters into `module` in place; everything else in it is frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    inject_adapter_in_model(config, module)
    for name, param in module.named_parameters():
        param.requires_grad = "lora_" in name
    return module


def text_lora_spec(backbone: nn.Module) -> LoraSpec:
    """The paper's text LoRA, with target names matching the backbone's attention projections."""
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    return TEXT_LORA if {"q_proj", "v_proj"} <= names else TEXT_LORA_BERT


def lora_dict(spec: LoraSpec) -> dict:
    """`apply_lora` keyword arguments for a spec (as a checkpoint's config records them)."""
    return asdict(spec)
