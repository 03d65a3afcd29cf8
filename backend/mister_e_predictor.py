"""MiSTER-E in the analysis pipeline: per-turn label, probabilities, gate weights and expert votes.

Each turn's transcript goes through the stage-1 text encoder. The offline speech encoder packs the
turns' audio clips together into Whisper windows, pools them per turn (backend.speech_encoder) and
normalises them per speaker; the paper's reads each clip through its Qwen2-Audio tower. The mixture
of experts then reads the whole dialogue at once.
A "mister-e" checkpoint holds the stage-2 weights; its encoders are the checkpoint components
"text" and "speech" (nested folders, checked against the versions it was trained with).
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from backend.checkpoints import Checkpoint
from backend.dialogue import Turn
from backend.encoders import (
    SpeechEncoder,
    TextEncoder,
    TowerSpeechEncoder,
    load_speech_encoder,
    load_text_encoder,
    require_model,
)
from backend.errors import ModelUnavailableError
from backend.model_store import ModelStore
from backend.predictors import TurnInputs
from backend.settings import Settings
from backend.speech_encoder import to_16k_mono
from models.mister_e import EXPERTS, MisterE, MisterEConfig

MODEL = "mister-e"


def checkpoint_modalities(checkpoint: Checkpoint) -> tuple[str, ...]:
    """The modalities a MiSTER-E checkpoint has encoders for (its components of the same names)."""
    return tuple(checkpoint.config["modalities"])


def build_model(checkpoint: Checkpoint, store: ModelStore, device: str) -> MisterE:
    """The stage-2 mixture of experts of a "mister-e" checkpoint, weights loaded, in eval mode."""
    require_model(checkpoint, MODEL)
    model = MisterE(MisterEConfig.from_dict(checkpoint.config["model"]))
    # the weights are stored in fp16; load_state_dict casts them back to the model's fp32
    model.load_state_dict(load_file(str(checkpoint.file("model.safetensors"))))
    return model.to(device).eval()


def label_index(model_labels: tuple[str, ...], labels: tuple[str, ...]) -> np.ndarray:
    """For each analysis label, its index in the model's labels (-1 when the model lacks it)."""
    index = np.array([model_labels.index(l) if l in model_labels else -1 for l in labels])
    if (index < 0).all():
        raise ModelUnavailableError(
            f"the MiSTER-E checkpoint predicts {', '.join(model_labels)}, none of the "
            f"analysis labels {', '.join(labels)}; use a checkpoint trained on them"
        )
    return index


def map_probs(probs: np.ndarray, index: np.ndarray) -> np.ndarray:
    """[T, C_model] probabilities -> [T, len(index)] over the analysis labels, renormalised."""
    mapped = np.where(index >= 0, probs[:, np.maximum(index, 0)], 0.0).astype(np.float64)
    total = mapped.sum(-1, keepdims=True)
    return np.where(total > 0, mapped / np.where(total > 0, total, 1.0), 1.0 / len(index))


class MisterEPredictor:
    def __init__(
        self,
        model: MisterE,
        labels: tuple[str, ...],
        text: TextEncoder,
        speech: SpeechEncoder | TowerSpeechEncoder | None,
        version: str,
        versions: dict[str, str],
    ):
        self.model, self.labels = model, labels
        self.text_encoder, self.speech_encoder = text, speech
        self.version, self.versions = version, versions

    def embed(self, turns: list[Turn], inputs: list[TurnInputs]) -> dict[str, torch.Tensor]:
        """Model inputs for one dialogue ([1, T, ...]); a turn with neither modality reads its empty text."""
        n, config = len(turns), self.model.config
        has_audio = torch.tensor([i.audio is not None and np.size(i.audio) > 0 for i in inputs])
        speech_present = has_audio & (self.speech_encoder is not None)
        text_present = torch.tensor([bool(t.text.strip()) for t in turns]) | ~speech_present
        speech = torch.zeros(n, config.speech_dim)
        text = torch.zeros(n, config.text_dim)
        if speech_present.any():
            kept = [(t, i) for t, i, keep in zip(turns, inputs, speech_present) if keep]
            clips = [to_16k_mono(i.audio, i.sample_rate) for _, i in kept]
            speech[speech_present] = self.speech_encoder.embed(clips, [t.speaker for t, _ in kept])
        if text_present.any():
            texts = [t.text for t, keep in zip(turns, text_present) if keep]
            text[text_present] = self.text_encoder.embed(texts)
        return {
            "speech": speech[None],
            "text": text[None],
            "mask": torch.ones(1, n, dtype=torch.bool),
            "speech_present": speech_present[None],
            "text_present": text_present[None],
        }

    def predict(
        self, turns: list[Turn], inputs: list[TurnInputs], labels: tuple[str, ...], explain: bool = False
    ) -> tuple[list[dict], list[str]]:
        if not turns:
            return [], []
        index = label_index(self.labels, tuple(labels))
        x = self.embed(turns, inputs)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model(**{k: v.to(device) for k, v in x.items()})
        mixed = map_probs(out.logits[0].softmax(-1).cpu().numpy(), index)
        experts = {
            name: map_probs(out.expert_logits[name][0].softmax(-1).cpu().numpy(), index) for name in EXPERTS
        }
        gate, available = out.gate[0].cpu().numpy().astype(np.float64), out.available[0].cpu().numpy()
        rows = []
        for i in range(len(turns)):
            weights = gate[i] / gate[i].sum()
            rows.append(
                {
                    "label": labels[int(mixed[i].argmax())],
                    "probs": dict(zip(labels, map(float, mixed[i]))),
                    "gate": {name: float(weights[j]) for j, name in enumerate(EXPERTS)},
                    "experts": {
                        name: dict(zip(labels, map(float, experts[name][i]))) if available[i, j] else None
                        for j, name in enumerate(EXPERTS)
                    },
                }
            )
        return rows, self._warnings(x)

    def _warnings(self, x: dict[str, torch.Tensor]) -> list[str]:
        speech, text = x["speech_present"][0], x["text_present"][0]
        if self.speech_encoder is None:
            return ["MiSTER-E: this checkpoint has no speech encoder; only the text expert ran"]
        if not speech.any():
            return ["MiSTER-E: no turn has audio; only the text expert ran"]
        if not text.all() or not speech.all():
            return [
                (
                    f"MiSTER-E: {int((~speech).sum())} turn(s) without audio and {int((~text).sum())} without "
                    "text were labelled from the modality they have"
                )
            ]
        return []


def load_predictor(checkpoint: Checkpoint, store: ModelStore, settings: Settings) -> MisterEPredictor:
    """The predictor of a "mister-e" checkpoint and its stage-1 encoders (found through `store`)."""
    device = settings.torch_device()
    model = build_model(checkpoint, store, device)
    if "text" not in checkpoint_modalities(checkpoint):
        raise ModelUnavailableError(
            f"{checkpoint.path}: a speech-only MiSTER-E checkpoint cannot label turns without audio; "
            "the app needs one trained with text (the default modalities)"
        )
    text = load_text_encoder(store.component(checkpoint, "text"), device, settings.torch_dtype())
    speech = None
    if "speech" in checkpoint_modalities(checkpoint):
        speech = load_speech_encoder(store.component(checkpoint, "speech"), device, dtype=settings.torch_dtype())
    return MisterEPredictor(model, checkpoint.labels, text, speech, checkpoint.version, checkpoint.versions())
