"""MiSTER-E's stage-1 encoders at serving time: backbones, tokenising, and encoder checkpoints.

A "text-encoder" checkpoint holds the LoRA adapters and head trained on a backbone that is not
stored in it: the MiniLM shipped in a pinned package (offline profile, sha256-checked by
backend.packaged) or a Hugging Face model read from the local cache (the paper's Qwen2.5-7B). A
"speech-encoder" checkpoint holds the head over backend.speech_encoder's pooled Whisper base states.
The components a checkpoint records (backbone package, Whisper package, feature code version) must
be the ones installed here, or it refuses to load: the trained weights would read different inputs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

from backend.checkpoints import Checkpoint
from backend.errors import ModelUnavailableError
from backend.hub import from_pretrained
from backend.packaged import PACKAGED, packaged_path
from backend.settings import get_settings
from backend.speech_encoder import (
    WhisperStates,
    feature_code_component,
    load_whisper_states,
    pooled_states,
    whisper_component,
)
from models.encoders import (
    FeatureEncoderConfig,
    FeatureSpeechEncoder,
    HeadConfig,
    TextUtteranceEncoder,
    apply_lora,
)

MINILM = "minilm"  # the offline text backbone, shipped in a package (backend.packaged)
PAPER_SPEECH_BACKBONE = "Qwen/Qwen2-Audio-7B"
SPEECH_PROMPT = "<|audio_bos|><|AUDIO|><|audio_eos|>What is the emotion of the person?:"
TEXT_ENCODER, SPEECH_ENCODER = "text-encoder", "speech-encoder"
SPEECH_KIND = "whisper-base-pooled"  # the speech-encoder checkpoints the app runs


def backbone_component(name: str) -> dict:
    """How a text-encoder checkpoint records its backbone: the pinned package, or a hub model id."""
    return PACKAGED[MINILM].component() if name == MINILM else {"kind": "hub", "name": name}


def load_text_backbone(name: str = MINILM, dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) for `name`: "minilm", a local folder, or a hub id such as "Qwen/Qwen2.5-7B"."""
    from transformers import AutoModel, AutoTokenizer

    source = str(packaged_path(MINILM)) if name == MINILM else name
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, source, "text backbone")
    model = from_pretrained(AutoModel.from_pretrained, source, "text backbone", dtype=dtype)
    # Decoders: pad on the right so real tokens keep positions 0..n-1 and never see padding.
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_speech_backbone(
    name: str = PAPER_SPEECH_BACKBONE, dtype: torch.dtype | None = None
) -> tuple[nn.Module, Any]:
    """(Qwen2AudioForConditionalGeneration, processor) from a hub id or a local folder."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = from_pretrained(AutoProcessor.from_pretrained, name, "speech backbone")
    load = Qwen2AudioForConditionalGeneration.from_pretrained
    model = from_pretrained(load, name, "speech backbone", dtype=dtype)
    processor.tokenizer.padding_side = "right"
    return model, processor


def text_inputs(tokenizer: Any, texts: list[str], max_tokens: int = 128) -> dict[str, torch.Tensor]:
    """Tokenised, right-padded batch of transcripts (at most `max_tokens` each)."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def speech_inputs(
    processor: Any, audios: list[np.ndarray], sr: int = 16000, prompt: str = SPEECH_PROMPT, min_s: float = 1.0
) -> dict[str, torch.Tensor]:
    """Processor batch for Qwen2-Audio: each clip padded to at least `min_s` (the processor caps 30 s)."""
    min_len = int(min_s * sr)
    clips = [np.pad(a, (0, max(0, min_len - len(a)))).astype(np.float32) for a in audios]
    batch = processor(text=[prompt] * len(clips), audio=clips, sampling_rate=sr, return_tensors="pt", padding=True)
    keys = ("input_ids", "attention_mask", "input_features", "feature_attention_mask")
    return {k: batch[k] for k in keys}


# ----------------------------------------------------------------------------- encoder checkpoints


def _describe(component: dict | None) -> str:
    if component is None:
        return "nothing recorded"
    if component["kind"] == "package":
        return f"the package {component['package']} {component['version']}"
    if component["kind"] == "code":
        return f"the features {component['name']}"
    return f"{component['kind']} {component.get('name') or component.get('model')}"


def _require_component(checkpoint: Checkpoint, name: str, expected: dict) -> None:
    """Refuse a checkpoint trained on another version of a component than the one installed here."""
    found = checkpoint.components.get(name)
    if found != expected:
        raise ModelUnavailableError(
            f"{checkpoint.path}: this {checkpoint.model} was trained on {_describe(found)} ({name}), but "
            f"this installation has {_describe(expected)}; use a checkpoint trained on it, or retrain "
            "the encoder here"
        )


def require_model(checkpoint: Checkpoint, model: str) -> None:
    """Refuse a checkpoint of another model than the one asked for (e.g. an encoder for MiSTER-E)."""
    if checkpoint.model != model:
        raise ModelUnavailableError(
            f"{checkpoint.path} is a {checkpoint.model} checkpoint, not a {model} one"
        )


def load_trained_state(model: nn.Module, checkpoint: Checkpoint) -> nn.Module:
    """Load an encoder checkpoint's trained tensors; only backbone tensors may be absent from it."""
    path = checkpoint.file("model.safetensors")
    result = model.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if missing or result.unexpected_keys:
        raise ModelUnavailableError(
            f"{path} does not match this encoder (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}); "
            "retrain stage 1 or point to the right checkpoint folder"
        )
    return model


@dataclass
class TextEncoder:
    """A trained text encoder, in eval mode, with the tokenizer and the token limit it was trained with."""

    model: TextUtteranceEncoder
    tokenizer: Any
    max_tokens: int

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), E] float32 embeddings, on the CPU."""
        device = next(self.model.parameters()).device
        inputs = text_inputs(self.tokenizer, texts, self.max_tokens)
        return self.model.embed(**{k: v.to(device) for k, v in inputs.items()}).float().cpu()


def speech_components() -> dict[str, dict]:
    """What a speech-encoder checkpoint records of its inputs: the Whisper weights and the feature code."""
    return {"whisper": whisper_component(), "features": feature_code_component()}


def speaker_groups(speakers: Sequence[str]) -> np.ndarray:
    """One group id per turn: turns of the same speaker share it (normalisation groups)."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(s, len(ids)) for s in speakers], dtype=np.int64)


@dataclass
class SpeechEncoder:
    """A trained speech encoder in eval mode, with the Whisper base encoder whose states it reads."""

    model: FeatureSpeechEncoder
    states: WhisperStates

    @torch.no_grad()
    def embed_features(self, features: np.ndarray, groups: np.ndarray | None = None) -> torch.Tensor:
        """[N, E] float32 embeddings (on the CPU) of pooled states, normalised within `groups`."""
        device = next(self.model.parameters()).device
        x = torch.as_tensor(features, dtype=torch.float32, device=device)
        g = None if groups is None else torch.as_tensor(groups, dtype=torch.long, device=device)
        return self.model.embed(x, g).float().cpu()

    def embed(self, clips: Sequence[np.ndarray], speakers: Sequence[str]) -> torch.Tensor:
        """[N, E] embeddings of one dialogue's 16 kHz turn clips (in turn order), normalised per speaker."""
        return self.embed_features(pooled_states(self.states, list(clips)), speaker_groups(speakers))


def load_text_encoder(checkpoint: Checkpoint, device: str = "cpu") -> TextEncoder:
    """The text encoder of a "text-encoder" checkpoint, on its backbone, with its trained tensors."""
    require_model(checkpoint, TEXT_ENCODER)
    config = checkpoint.config
    _require_component(checkpoint, "backbone", backbone_component(config["backbone"]))
    backbone, tokenizer = load_text_backbone(config["backbone"])
    if config.get("lora"):
        apply_lora(backbone, **config["lora"])
    model = load_trained_state(TextUtteranceEncoder(backbone, HeadConfig(**config["head"])), checkpoint)
    return TextEncoder(model.to(device).eval(), tokenizer, config["max_tokens"])


def load_speech_encoder(checkpoint: Checkpoint, device: str = "cpu", cache_dir: Path | None = None) -> SpeechEncoder:
    """The head of a "speech-encoder" checkpoint on the packaged Whisper base it was trained on
    (joined once into `cache_dir`, by default the settings' model cache)."""
    require_model(checkpoint, SPEECH_ENCODER)
    if checkpoint.config.get("kind") != SPEECH_KIND:
        raise ModelUnavailableError(
            f"{checkpoint.path}: a {checkpoint.config.get('kind')!r} speech encoder cannot run in the app; "
            f"it runs the {SPEECH_KIND} encoder (retrain the speech encoder)"
        )
    for name, expected in speech_components().items():
        _require_component(checkpoint, name, expected)
    encoder = FeatureSpeechEncoder(FeatureEncoderConfig(**checkpoint.config["encoder"]))
    model = load_trained_state(encoder, checkpoint)
    states = load_whisper_states(Path(cache_dir or get_settings().model_cache_dir))
    return SpeechEncoder(model.to(device).eval(), states)


def embedding_dim(checkpoint: Checkpoint) -> int:
    """The size of the embeddings a stage-1 encoder checkpoint gives stage 2."""
    config = checkpoint.config
    return config["head"]["embed_dim"] if checkpoint.model == TEXT_ENCODER else config["encoder"]["embed_dim"]
