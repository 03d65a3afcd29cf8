"""FARCER as a per-turn predictor for the analysis pipeline (key "farcer").

The static prompt prefix is encoded once per process and every turn is labelled incrementally on
top of it. Served zero-shot: few-shot examples would be corpus transcripts, which the repository
does not ship.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from backend.dialogue import Turn
from backend.errors import InputError, ModelUnavailableError
from backend.predictors import TurnInputs
from backend.profiles import Profile
from backend.settings import Settings
from models.farcer import Farcer, PrefixCache
from models.farcer_prompt import Prompt, query_segments, render_text, turn_segments

FaceFeatures = Callable[[list[np.ndarray]], np.ndarray]


@dataclass
class FarcerPredictor:
    farcer: Farcer
    faces: FaceFeatures  # RGB uint8 crops -> [N, image_dim] features
    past_labels: str
    version: str
    key: str = "farcer"
    name: str = "FARCER"
    _prefix: PrefixCache | None = field(default=None, repr=False)

    @property
    def prefix(self) -> PrefixCache:
        if self._prefix is None:
            self._prefix = self.farcer.encode_prefix((), self.past_labels)
        return self._prefix

    def predict(
        self, turns: list[Turn], inputs: list[TurnInputs], labels: tuple[str, ...], explain: bool = False
    ) -> tuple[list[dict], list[str]]:
        if len(inputs) != len(turns):
            raise InputError(f"got {len(inputs)} turn inputs for {len(turns)} turns; give one per turn")
        missing = [label for label in labels if label not in self.farcer.labels]
        if missing:
            raise InputError(
                f"FARCER was trained for {', '.join(self.farcer.labels)} and cannot score {', '.join(missing)}; "
                "use a profile with the same label set"
            )
        if not turns:
            return [], []
        turns = [turn.with_label(None) for turn in turns]
        faces = self.face_vectors(inputs)
        with torch.inference_mode():
            result = self.farcer.label_dialogue(turns, faces, self.prefix, self.past_labels)
        columns = [self.farcer.labels.index(label) for label in labels]
        probs = result.probs[:, columns].double()
        probs = (probs / probs.sum(-1, keepdim=True)).tolist()
        outputs = []
        for i, row in enumerate(probs):
            out = {"label": labels[int(np.argmax(row))], "probs": dict(zip(labels, row))}
            if explain:
                out["prompt"] = self.prompt_text(turns, faces, result.labels, result.starts[i], i)
            outputs.append(out)
        warnings = [f"FARCER: {result.warning}"] if result.warning else []
        return outputs, warnings

    def face_vectors(self, inputs: Sequence[TurnInputs]) -> list[np.ndarray | None]:
        """One feature per turn with a face crop, None (no image slot) for the others."""
        found = [i for i, x in enumerate(inputs) if x.face is not None]
        vectors: list[np.ndarray | None] = [None] * len(inputs)
        if found:
            for i, vector in zip(found, self.faces([inputs[i].face for i in found])):
                vectors[i] = vector
        return vectors

    def prompt_text(
        self, turns: list[Turn], faces: list, predicted: list[str], start: int, i: int
    ) -> str:
        """The exact prompt that labelled turn i (window start included), image slots marked."""
        shown = predicted if self.past_labels != "none" else [None] * len(turns)
        lines = [turn_segments(turns[j], faces[j], shown[j]) for j in range(start, i)]
        prompt = Prompt(
            self.prefix.segments,
            [*lines, turn_segments(turns[i], faces[i])],
            query_segments(turns[i].speaker, self.farcer.chat),
        )
        return render_text(prompt.segments)


def _offline_faces(path) -> FaceFeatures:
    from models.face_cnn import preprocess
    from training.face_encoder import load_face_encoder

    model, config, _ = load_face_encoder(path)

    def features(crops: list[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model.features(preprocess(crops, config)).numpy()

    return features


def _paper_faces(name: str, device: str) -> FaceFeatures:
    from models.farcer import load_face_encoder

    encoder = load_face_encoder(name, device)
    return lambda crops: encoder(crops).cpu().numpy()


def load_farcer_predictor(profile: Profile, settings: Settings) -> FarcerPredictor:
    """The profile's FARCER checkpoint with its face encoder; ModelUnavailableError when absent."""
    from training.farcer import CONFIG, checkpoint_id, load_checkpoint

    path = settings.checkpoints_dir / profile.farcer_checkpoint
    if not (path / CONFIG).is_file():
        raise ModelUnavailableError(
            f"FARCER checkpoint {path} is missing: train it with `python -m training train farcer ... --out {path}`"
            + (" on a machine with the paper's models" if profile.name == "paper" else "")
        )
    device = settings.torch_device()
    farcer, meta = load_checkpoint(path, device)
    encoder = settings.checkpoints_dir / profile.face_encoder
    faces = _offline_faces(encoder) if encoder.is_dir() else _paper_faces(profile.face_encoder, device)
    # Gold past labels do not exist in the app: a model trained with labelled past turns sees its own.
    past = "none" if meta["train"]["past_labels"] == "none" else "predicted"
    return FarcerPredictor(farcer, faces, past, version=f"{path.name}-{checkpoint_id(path)}")

