"""The per-turn model interface the analysis pipeline runs, and the profile's model registry."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from backend.dialogue import Turn
from backend.errors import ModelUnavailableError
from backend.profiles import Profile
from backend.settings import Settings


@dataclass(frozen=True)
class TurnInputs:
    """What a model sees of one turn besides its transcript line."""

    audio: np.ndarray | None  # mono float32 at `sample_rate`, None without an audio track
    sample_rate: int
    face: np.ndarray | None  # RGB uint8 crop of the speaker's face, None when no face was found


class TurnPredictor(Protocol):
    """A model that labels every turn of one dialogue."""

    key: str  # the per-turn key it adds to the analysis JSON (e.g. "mister_e")
    name: str
    version: str

    def predict(
        self, turns: list[Turn], inputs: list[TurnInputs], labels: tuple[str, ...], explain: bool = False
    ) -> tuple[list[dict], list[str]]:
        """One output dict per turn (at least `label` and `probs` over `labels`) and warnings."""
        ...


PredictorLoader = Callable[[Profile, Settings], TurnPredictor]

# Each model's loader as "module:function", imported when that model is first loaded, in display order.
LOADER_PATHS: dict[str, str] = {
    "mister_e": "backend.mister_e_predictor:load_mister_e",
    "farcer": "backend.farcer_predictor:load_farcer_predictor",
}

# Loaders that replace the built-in ones (tests register doubles here).
PREDICTOR_LOADERS: dict[str, PredictorLoader] = {}


def _imported(path: str) -> PredictorLoader:
    module, function = path.split(":")

    def load(profile: Profile, settings: Settings) -> TurnPredictor:
        return getattr(importlib.import_module(module), function)(profile, settings)

    return load


def unavailable(reason: str) -> PredictorLoader:
    """A loader for a model that cannot be loaded, saying why."""

    def load(profile: Profile, settings: Settings) -> TurnPredictor:
        raise ModelUnavailableError(reason)

    return load


def predictor_loaders() -> dict[str, PredictorLoader]:
    """The loader of every model the app shows, in display order."""
    return {key: PREDICTOR_LOADERS.get(key) or _imported(path) for key, path in LOADER_PATHS.items()}


_CACHE: dict[tuple[str, str, str], TurnPredictor] = {}


def model_status(profile: Profile, settings: Settings) -> dict[str, TurnPredictor | str]:
    """Each model, loaded (once per process), or the reason it is unavailable."""
    status: dict[str, TurnPredictor | str] = {}
    for key, loader in predictor_loaders().items():
        cache_key = (key, profile.name, str(settings.checkpoints_dir))
        try:
            if cache_key not in _CACHE:
                _CACHE[cache_key] = loader(profile, settings)
            status[key] = _CACHE[cache_key]
        except ModelUnavailableError as exc:
            status[key] = str(exc)
    return status


def load_predictors(profile: Profile, settings: Settings) -> tuple[list[TurnPredictor], list[str]]:
    """The available models, and a warning for each unavailable one."""
    status = model_status(profile, settings)
    return [p for p in status.values() if not isinstance(p, str)], [p for p in status.values() if isinstance(p, str)]
