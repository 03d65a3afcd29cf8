"""The per-turn model interface the analysis pipeline runs, and loading each registered model's
active version (once per process)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from backend.dialogue import Turn
from backend.errors import ModelUnavailableError
from backend.model_store import open_model_store
from backend.profiles import Profile
from backend import registry
from backend.registry import ModelSpec, resolve
from backend.settings import Settings


@dataclass(frozen=True)
class TurnInputs:
    """What a model sees of one turn besides its transcript line."""

    audio: np.ndarray | None  # mono float32 at `sample_rate`, None without an audio track
    sample_rate: int
    face: np.ndarray | None  # RGB uint8 crop of the speaker's face, None when no face was found


class TurnPredictor(Protocol):
    """A model that labels every turn of one dialogue."""

    version: str  # the checkpoint version (backend.checkpoints)
    versions: dict[str, str]  # its own version and every component's, as the analysis records them

    def predict(
        self, turns: list[Turn], inputs: list[TurnInputs], labels: tuple[str, ...], explain: bool = False
    ) -> tuple[list[dict], list[str]]:
        """One output dict per turn (at least `label` and `probs` over `labels`, plus the spec's
        fields) and warnings."""
        ...


PredictorLoader = Callable[[Profile, Settings], TurnPredictor]

# Loaders that replace the registered ones, by analysis key (tests register doubles here).
PREDICTOR_LOADERS: dict[str, PredictorLoader] = {}


def registered_loader(spec: ModelSpec) -> PredictorLoader:
    """Load the active version of `spec` for a profile: the one chosen in the model store, else the
    profile's built-in checkpoint."""

    def load(profile: Profile, settings: Settings) -> TurnPredictor:
        default = spec.checkpoints.get(profile.name)
        if default is None:
            raise ModelUnavailableError(f"{spec.title} has no checkpoint for the {profile.name} profile")
        store = open_model_store(settings)
        return resolve(spec.loader)(store.active(spec.name, default), store, settings)

    return load


def unavailable(reason: str) -> PredictorLoader:
    """A loader for a model that cannot be loaded, saying why."""

    def load(profile: Profile, settings: Settings) -> TurnPredictor:
        raise ModelUnavailableError(reason)

    return load


_CACHE: dict[tuple[str, ...], TurnPredictor] = {}


def model_status(profile: Profile, settings: Settings) -> dict[str, TurnPredictor | str]:
    """Each registered model by analysis key, in display order: loaded (once per process, active
    version, device and dtype), or the reason it is unavailable."""
    status: dict[str, TurnPredictor | str] = {}
    store = open_model_store(settings)
    for spec in registry.MODELS:
        loader = PREDICTOR_LOADERS.get(spec.key) or registered_loader(spec)
        active = store.active_version(spec.name) or ""
        cache_key = (spec.key, profile.name, str(settings.checkpoints_dir), active, settings.torch_device(),
                     str(settings.torch_dtype()))
        try:
            if cache_key not in _CACHE:
                _CACHE[cache_key] = loader(profile, settings)
            status[spec.key] = _CACHE[cache_key]
        except ModelUnavailableError as exc:
            status[spec.key] = str(exc)
    return status


def load_predictors(profile: Profile, settings: Settings) -> tuple[dict[str, TurnPredictor], list[str]]:
    """The available models by analysis key, and a warning ("<title>: <reason>") for each unavailable one."""
    status = model_status(profile, settings)
    ready = {key: p for key, p in status.items() if not isinstance(p, str)}
    return ready, [f"{registry.model_spec(key).title}: {p}" for key, p in status.items() if isinstance(p, str)]
