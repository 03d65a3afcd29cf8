"""FARCER checkpoints, and FARCER as a per-turn predictor for the analysis pipeline (key "farcer").

A "farcer-core" checkpoint is a Hugging Face folder: the core LM and its tokenizer (with the chat
template). A "farcer" checkpoint holds only what training changed (trainable.safetensors: the
projector, plus the LoRA adapters of the lora variant) and names its components: "core" (a
farcer-core checkpoint, or a hub LM for the paper profile) and "face_encoder" (a face-encoder
checkpoint, or a hub ViT). Its config is {"model": FarcerConfig fields (+ "lm", the core as training
named it; the shipped checkpoints also carry "vision" and "labels"), "variant"}; a farcer-core's also
has "core_config".

The predictor encodes the static prompt prefix once per process and labels every turn incrementally
on top of it. It is served zero-shot: few-shot examples would be corpus transcripts, which the
repository does not ship.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from backend.checkpoints import Checkpoint
from backend.dialogue import Turn
from backend.errors import InputError, ModelUnavailableError
from backend.face_encoder import FaceFeatures, component_features
from backend.farcer_processor import FarcerProcessor, structured
from backend.hub import from_pretrained
from backend.hub_components import check_hub_component, load_kwargs
from backend.model_store import ModelStore
from backend.packaged import PACKAGED, converted_lm, packaged_for
from backend.predictors import TurnInputs
from backend.settings import Settings, get_settings
from models.farcer import Farcer, FarcerConfig, PrefixCache, apply_lora

MODEL = "farcer"
CORE = "farcer-core"
WEIGHTS = "trainable.safetensors"
_DESCRIPTIVE = ("lm", "vision", "labels")  # in config["model"] for people and cards, not for the maths


def model_config(checkpoint: Checkpoint) -> FarcerConfig:
    """The FarcerConfig of a farcer or farcer-core checkpoint (its descriptive keys left out)."""
    if checkpoint.model not in (MODEL, CORE):
        raise ModelUnavailableError(f"{checkpoint.path} is a {checkpoint.model} checkpoint, not a FARCER one")
    model = {k: v for k, v in checkpoint.config["model"].items() if k not in _DESCRIPTIVE}
    try:
        return FarcerConfig(**model)
    except (TypeError, ValueError) as exc:
        raise ModelUnavailableError(f"{checkpoint.path}: its model config does not fit this code ({exc})") from None


def load_core(
    source: Checkpoint | str, device: str, dtype: torch.dtype = torch.float32, revision: str | None = None
) -> tuple[nn.Module, Any]:
    """A core LM (eval mode, on `device`) and its tokenizer, from a farcer-core checkpoint, a packaged
    LM by name (e.g. "smollm2", converted once into the model cache), or a hub name (at `revision`
    when given) / local Hugging Face folder; ModelUnavailableError when it is not on this machine."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(source, Checkpoint):
        name = str(source.path)
    elif source in PACKAGED:
        name = str(converted_lm(source, get_settings().model_cache_dir))
    else:
        name = source
    pin = {"revision": revision} if revision else {}
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, name, "FARCER tokenizer", **pin)
    lm = from_pretrained(AutoModelForCausalLM.from_pretrained, name, "FARCER language model", dtype=dtype, **pin)
    return lm.to(device).eval(), tokenizer


def core_source(checkpoint: Checkpoint, store: ModelStore) -> Checkpoint | str:
    """The core a checkpoint runs on: itself for a farcer-core, else its "core" component (a
    checkpoint at the recorded version, a packaged LM's name, or a hub name)."""
    if checkpoint.model == CORE:
        return checkpoint
    component = checkpoint.components.get("core") or {}
    if component.get("kind") == "hub":
        return component["name"]
    if component.get("kind") == "package":
        return packaged_for(component).name
    return store.component(checkpoint, "core")


def load_farcer(
    checkpoint: Checkpoint, store: ModelStore, device: str, dtype: torch.dtype = torch.float32
) -> tuple[Farcer, FarcerProcessor]:
    """The Farcer of a farcer or farcer-core checkpoint in eval mode (its core in `dtype`; projector and
    adapters stay float32), and its processor."""
    config = model_config(checkpoint)
    revision = None
    if checkpoint.model == MODEL and (checkpoint.components.get("core") or {}).get("kind") == "hub":
        revision = load_kwargs(check_hub_component(checkpoint, "core")).get("revision")
    lm, tokenizer = load_core(core_source(checkpoint, store), device, dtype, revision=revision)
    processor = FarcerProcessor(tokenizer, checkpoint.labels)
    farcer = Farcer(lm, config, processor.label_ids, processor.end_ids)
    if checkpoint.config.get("variant") == "lora":
        apply_lora(farcer, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets,
                   config.lora_layers)
    if checkpoint.has_file(WEIGHTS):
        load_trainable(farcer, checkpoint.file(WEIGHTS))
    return farcer.eval(), processor


def build_model(checkpoint: Checkpoint, store: ModelStore, device: str) -> Farcer:
    """The registry's builder: the checkpoint's Farcer, weights loaded, in eval mode."""
    return load_farcer(checkpoint, store, device)[0]


def save_trainable(farcer: Farcer, path: str | os.PathLike) -> None:
    """What training changes (`Farcer.trainable_state`) as safetensors, with the projector's shape."""
    from safetensors.torch import save_file

    meta = {"projector": farcer.projector.kind, "image_dim": str(farcer.config.image_dim)}
    save_file(farcer.trainable_state(), str(path), metadata=meta)


def load_trainable(farcer: Farcer, path: str | os.PathLike) -> None:
    """Load a `save_trainable` file into a Farcer built the same way (apply_lora first for adapters)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    kind, dim = farcer.projector.kind, str(farcer.config.image_dim)
    if meta.get("projector") != kind or meta.get("image_dim") != dim:
        raise ModelUnavailableError(
            f"{path} holds a {meta.get('projector')} projector for {meta.get('image_dim')}-d faces but the "
            f"model has a {kind} one for {dim}-d faces; build the model with the same config"
        )
    try:
        farcer.load_trainable_state(load_file(str(path), device=str(farcer.device)))
    except ValueError as exc:
        raise ModelUnavailableError(f"{path}: {exc}") from None


def served_past_labels(checkpoint: Checkpoint) -> str:
    """Gold past labels do not exist in the app: a model trained with labelled past turns sees its own."""
    trained = checkpoint.data.get("train", {}).get("past_labels", "none")
    return "none" if trained == "none" else "predicted"


def trained_with_faces(checkpoint: Checkpoint) -> bool:
    """Whether the head's projector learned to read faces; a head trained text only is never shown one."""
    return checkpoint.data.get("faces") is not None


@dataclass
class FarcerPredictor:
    farcer: Farcer
    processor: FarcerProcessor
    faces: FaceFeatures | None  # RGB uint8 crops -> [N, image_dim] features; None: a text-only head
    past_labels: str
    version: str
    versions: dict[str, str] = field(default_factory=dict)
    _prefix: PrefixCache | None = field(default=None, repr=False)

    @property
    def prefix(self) -> PrefixCache:
        if self._prefix is None:
            self._prefix = self.processor.encode_prefix(self.farcer, (), self.past_labels)
        return self._prefix

    def predict(
        self, turns: list[Turn], inputs: list[TurnInputs], labels: tuple[str, ...], explain: bool = False
    ) -> tuple[list[dict], list[str]]:
        if len(inputs) != len(turns):
            raise InputError(f"got {len(inputs)} turn inputs for {len(turns)} turns; give one per turn")
        known = self.processor.labels
        missing = [label for label in labels if label not in known]
        if missing:
            raise InputError(
                f"FARCER was trained for {', '.join(known)} and cannot score {', '.join(missing)}; "
                "use a profile with the same label set"
            )
        if not turns:
            return [], []
        turns = [turn.with_label(None) for turn in turns]
        faces = self.face_vectors(inputs)
        with torch.inference_mode():
            result = self.processor.label_dialogue(self.farcer, turns, faces, self.prefix, self.past_labels)
        columns = [known.index(label) for label in labels]
        probs = result.probs[:, columns].double()
        probs = (probs / probs.sum(-1, keepdim=True)).tolist()
        outputs = []
        for i, row in enumerate(probs):
            out = {"label": labels[int(np.argmax(row))], "probs": dict(zip(labels, row))}
            if explain:
                prompt = self.processor.prompt(
                    turns[: i + 1], faces[: i + 1], past_labels=self.past_labels, predicted=result.labels,
                    start=result.starts[i],
                )
                out["prompt"] = structured(prompt.segments)  # exactly the prompt that labelled turn i
            outputs.append(out)
        warnings = [f"FARCER: {result.warning}"] if result.warning else []
        return outputs, warnings

    def face_vectors(self, inputs: list[TurnInputs]) -> list[np.ndarray | None]:
        """One feature per turn with a face crop, None (no image slot) for the others and for every turn
        of a head trained without faces (its projector never learned to read one)."""
        if self.faces is None:
            return [None] * len(inputs)
        found = [i for i, x in enumerate(inputs) if x.face is not None]
        vectors: list[np.ndarray | None] = [None] * len(inputs)
        if found:
            for i, vector in zip(found, self.faces([inputs[i].face for i in found])):
                vectors[i] = vector
        return vectors


def load_predictor(checkpoint: Checkpoint, store: ModelStore, settings: Settings) -> FarcerPredictor:
    """A farcer checkpoint with its core and face encoder components; ModelUnavailableError when a
    component is missing or not the version it was trained with."""
    if checkpoint.model != MODEL:
        raise ModelUnavailableError(
            f"{checkpoint.path} is a {checkpoint.model} checkpoint; the app serves {MODEL} ones"
        )
    device = settings.torch_device()
    farcer, processor = load_farcer(checkpoint, store, device, settings.torch_dtype())
    faces = component_features(checkpoint, "face_encoder", store, device) if trained_with_faces(checkpoint) else None
    return FarcerPredictor(
        farcer, processor, faces, served_past_labels(checkpoint), checkpoint.version, checkpoint.versions()
    )

