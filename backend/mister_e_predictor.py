"""MiSTER-E in the analysis pipeline: per-turn label, probabilities, gate weights and expert votes.

Each turn's transcript goes through the stage-1 text encoder and its 16 kHz audio through the
speech features and speech encoder; the mixture of experts then reads the whole dialogue at once.
"""

from __future__ import annotations

import numpy as np
import torch

from backend.dialogue import Turn
from backend.errors import ModelUnavailableError
from backend.predictors import TurnInputs
from backend.profiles import Profile
from backend.settings import Settings
from models.encoders import load_encoder, text_inputs
from models.mister_e import EXPERTS
from training.mister_e import MisterECheckpoint, load_checkpoint
from training.speech_features import speech_feature_vector


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
    key = "mister_e"
    name = "MiSTER-E"

    def __init__(self, checkpoint: MisterECheckpoint):
        if "text" not in checkpoint.modalities:
            raise ModelUnavailableError(
                f"{checkpoint.path}: a speech-only MiSTER-E checkpoint cannot label turns without audio; "
                "the app needs one trained with text (the default modalities)"
            )
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.version = checkpoint.version
        self.text_encoder, meta, self.tokenizer = load_encoder(checkpoint.path / "text")
        self.max_tokens = meta["max_tokens"]
        self.speech_encoder = None
        if "speech" in checkpoint.modalities:
            self.speech_encoder = load_encoder(checkpoint.path / "speech")[0]

    @torch.no_grad()
    def _text(self, texts: list[str]) -> torch.Tensor:
        return self.text_encoder.embed(**text_inputs(self.tokenizer, texts, self.max_tokens)).float()

    @torch.no_grad()
    def _speech(self, clips: list[TurnInputs]) -> torch.Tensor:
        features = np.stack([speech_feature_vector(c.audio, c.sample_rate) for c in clips])
        return self.speech_encoder.embed(torch.from_numpy(features)).float()

    def embed(self, turns: list[Turn], inputs: list[TurnInputs]) -> dict[str, torch.Tensor]:
        """Model inputs for one dialogue ([1, T, ...]); a turn with neither modality reads its empty text."""
        n, config = len(turns), self.model.config
        has_audio = torch.tensor([i.audio is not None and np.size(i.audio) > 0 for i in inputs])
        speech_present = has_audio & (self.speech_encoder is not None)
        text_present = torch.tensor([bool(t.text.strip()) for t in turns]) | ~speech_present
        speech = torch.zeros(n, config.speech_dim)
        text = torch.zeros(n, config.text_dim)
        if speech_present.any():
            speech[speech_present] = self._speech([c for c, keep in zip(inputs, speech_present) if keep])
        if text_present.any():
            text[text_present] = self._text([t.text for t, keep in zip(turns, text_present) if keep])
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
        index = label_index(self.checkpoint.labels, tuple(labels))
        x = self.embed(turns, inputs)
        with torch.no_grad():
            out = self.model.eval()(**x)
        mixed = map_probs(out.logits[0].softmax(-1).numpy(), index)
        experts = {name: map_probs(out.expert_logits[name][0].softmax(-1).numpy(), index) for name in EXPERTS}
        gate, available = out.gate[0].numpy().astype(np.float64), out.available[0].numpy()
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


def load_mister_e(profile: Profile, settings: Settings) -> MisterEPredictor:
    """The profile's MiSTER-E (ModelUnavailableError, without loading anything, when it is absent)."""
    return MisterEPredictor(load_checkpoint(settings.checkpoints_dir / profile.mister_e_checkpoint))
