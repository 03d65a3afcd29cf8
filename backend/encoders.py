"""MiSTER-E's stage-1 encoders at serving time: backbones, tokenising, and encoder checkpoints.

A "text-encoder" checkpoint holds the LoRA adapters and head trained on a backbone that is not
stored in it: the MiniLM shipped in a pinned package (offline profile, sha256-checked by
backend.packaged) or a Hugging Face model (the paper's Qwen2.5-7B; a hub id at its cached revision
or a local folder, backend.hub_components). A "speech-encoder" checkpoint is one of two kinds:
"whisper-base-pooled" (offline) holds the head over backend.speech_encoder's pooled Whisper base
states; "qwen2-audio-tower" (paper) holds the LoRA adapters and head on the audio tower of a
Qwen2-Audio model named like a text backbone. The components a checkpoint records must be the ones
installed here, or it refuses to load: the trained weights would read different inputs.
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
from backend.hub_components import check_hub_component, hub_component, load_kwargs
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
    AudioTowerEncoder,
    FeatureEncoderConfig,
    FeatureSpeechEncoder,
    HeadConfig,
    TextUtteranceEncoder,
    apply_lora,
)

MINILM = "minilm"  # the offline text backbone, shipped in a package (backend.packaged)
PAPER_SPEECH_BACKBONE = "Qwen/Qwen2-Audio-7B"
TEXT_ENCODER, SPEECH_ENCODER = "text-encoder", "speech-encoder"
SPEECH_KIND = "whisper-base-pooled"  # the offline speech encoder (pooled Whisper base states)
TOWER_KIND = "qwen2-audio-tower"  # the paper's: LoRA on a Qwen2-Audio audio tower
WHISPER_BASE = "whisper-base"  # --speech-backbone for the offline kind


def backbone_component(name: str) -> dict:
    """How an encoder checkpoint records its backbone: the pinned MiniLM package, or a Hugging Face
    model (hub id at its cached revision, or a local folder with its file hashes)."""
    return PACKAGED[MINILM].component() if name == MINILM else hub_component(name)


def load_text_backbone(
    name: str = MINILM, dtype: torch.dtype | None = None, revision: str | None = None
) -> tuple[nn.Module, Any]:
    """(model, tokenizer) for `name`: "minilm", a local folder, or a hub id such as "Qwen/Qwen2.5-7B"."""
    from transformers import AutoModel, AutoTokenizer

    source = str(packaged_path(MINILM)) if name == MINILM else name
    pin = {"revision": revision} if revision else {}
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, source, "text backbone", **pin)
    model = from_pretrained(AutoModel.from_pretrained, source, "text backbone", dtype=dtype, **pin)
    # Decoders: pad on the right so real tokens keep positions 0..n-1 and never see padding.
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_speech_backbone(
    name: str = PAPER_SPEECH_BACKBONE, dtype: torch.dtype | None = None, revision: str | None = None
) -> tuple[nn.Module, Any]:
    """(Qwen2AudioForConditionalGeneration, processor) from a hub id or a local folder."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    pin = {"revision": revision} if revision else {}
    processor = from_pretrained(AutoProcessor.from_pretrained, name, "speech backbone", **pin)
    load = Qwen2AudioForConditionalGeneration.from_pretrained
    model = from_pretrained(load, name, "speech backbone", dtype=dtype, **pin)
    processor.tokenizer.padding_side = "right"
    return model, processor


def load_audio_tower(
    name: str = PAPER_SPEECH_BACKBONE, dtype: torch.dtype | None = None, revision: str | None = None
) -> tuple[nn.Module, Any]:
    """(the Whisper-style audio tower of a Qwen2-Audio model, its feature extractor); the language
    model is dropped."""
    model, processor = load_speech_backbone(name, dtype, revision)
    return model.model.audio_tower, processor.feature_extractor


def tower_inputs(feature_extractor: Any, audios: Sequence[np.ndarray], sr: int = 16000) -> dict[str, torch.Tensor]:
    """Log-mel features padded to the tower's window (longer clips are cut at it) and their frame mask;
    clips shorter than 0.1 s are padded with silence so that every clip has frames."""
    min_len = int(0.1 * sr)
    clips = [np.pad(a, (0, max(0, min_len - len(a)))).astype(np.float32) for a in audios]
    batch = feature_extractor(clips, sampling_rate=sr, return_attention_mask=True, padding="max_length",
                              return_tensors="pt")
    return {"input_features": batch["input_features"], "feature_attention_mask": batch["attention_mask"]}


def text_inputs(tokenizer: Any, texts: list[str], max_tokens: int = 128) -> dict[str, torch.Tensor]:
    """Tokenised, right-padded batch of transcripts (at most `max_tokens` each)."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


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


def load_text_encoder(checkpoint: Checkpoint, device: str = "cpu", dtype: torch.dtype | None = None) -> TextEncoder:
    """The text encoder of a "text-encoder" checkpoint, on its backbone (in `dtype`; the head stays
    float32), with its trained tensors."""
    require_model(checkpoint, TEXT_ENCODER)
    config = checkpoint.config
    name, revision = _backbone_source(checkpoint)
    backbone, tokenizer = load_text_backbone(name, dtype=dtype, revision=revision)
    if config.get("lora"):
        apply_lora(backbone, **config["lora"])
    model = load_trained_state(TextUtteranceEncoder(backbone, HeadConfig(**config["head"])), checkpoint)
    return TextEncoder(model.to(device).eval(), tokenizer, config["max_tokens"])


def _backbone_source(checkpoint: Checkpoint) -> tuple[str, str | None]:
    """(name, hub revision or None) of the backbone an encoder checkpoint recorded, after checking that
    this machine has exactly that backbone."""
    if checkpoint.config["backbone"] == MINILM:
        _require_component(checkpoint, "backbone", backbone_component(MINILM))
        return MINILM, None
    component = check_hub_component(checkpoint, "backbone")
    return component["name"], load_kwargs(component).get("revision")


@dataclass
class TowerSpeechEncoder:
    """A trained Qwen2-Audio tower encoder in eval mode, with its feature extractor."""

    model: AudioTowerEncoder
    feature_extractor: Any
    batch_size: int = 8

    @torch.no_grad()
    def embed(self, clips: Sequence[np.ndarray], speakers: Sequence[str] | None = None) -> torch.Tensor:
        """[N, E] float32 embeddings (on the CPU) of 16 kHz clips; each clip is embedded on its own
        (`speakers` is accepted for the SpeechEncoder interface: this kind does not normalise per speaker)."""
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(clips), self.batch_size):
            inputs = tower_inputs(self.feature_extractor, list(clips[start : start + self.batch_size]))
            out.append(self.model.embed(**{k: v.to(device) for k, v in inputs.items()}).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.embed_dim)


def load_tower_speech_encoder(
    checkpoint: Checkpoint, device: str = "cpu", dtype: torch.dtype | None = None
) -> TowerSpeechEncoder:
    """The encoder of a "qwen2-audio-tower" speech-encoder checkpoint on the very backbone it recorded
    (in `dtype`; the head stays float32)."""
    config = checkpoint.config
    name, revision = _backbone_source(checkpoint)
    tower, extractor = load_audio_tower(name, dtype=dtype, revision=revision)
    apply_lora(tower, **config["lora"])
    model = load_trained_state(AudioTowerEncoder(tower, HeadConfig(**config["head"])), checkpoint)
    return TowerSpeechEncoder(model.to(device).eval(), extractor)


def load_speech_encoder(
    checkpoint: Checkpoint, device: str = "cpu", cache_dir: Path | None = None, dtype: torch.dtype | None = None
) -> SpeechEncoder | TowerSpeechEncoder:
    """The speech encoder of a "speech-encoder" checkpoint: a Qwen2-Audio tower encoder (its tower in
    `dtype`), or the head on the packaged Whisper base it was trained on (joined once into `cache_dir`,
    by default the settings' model cache; CTranslate2 runs Whisper in its own precision)."""
    require_model(checkpoint, SPEECH_ENCODER)
    kind = checkpoint.config.get("kind")
    if kind == TOWER_KIND:
        return load_tower_speech_encoder(checkpoint, device, dtype)
    if kind != SPEECH_KIND:
        raise ModelUnavailableError(
            f"{checkpoint.path}: a {kind!r} speech encoder cannot run in the app; it runs the {SPEECH_KIND} "
            f"and {TOWER_KIND} encoders (retrain the speech encoder)"
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
    return config["head"]["embed_dim"] if "head" in config else config["encoder"]["embed_dim"]
