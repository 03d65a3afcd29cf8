"""The per-turn model interface the analysis pipeline runs, and the profile's model registry."""
from __future__ import annotations

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

# Filled by the model packages as they are built: key -> loader. A loader raises
# ModelUnavailableError with a message that says how to get the model.
PREDICTOR_LOADERS: dict[str, PredictorLoader] = {}


def _missing(title: str, issue_hint: str) -> PredictorLoader:
    def load(profile: Profile, settings: Settings) -> TurnPredictor:
        raise ModelUnavailableError(f"{title} is not available in the {profile.name!r} profile yet: {issue_hint}")

    return load


def predictor_loaders() -> dict[str, PredictorLoader]:
    """The loaders for every model the app shows, in display order."""
    return {
        "mister_e": PREDICTOR_LOADERS.get(
            "mister_e", _missing("MiSTER-E", "its model and offline checkpoint are not built")
        ),
        "farcer": PREDICTOR_LOADERS.get(
            "farcer", _missing("FARCER", "its model and offline checkpoint are not built")
        ),
    }


_CACHE: dict[tuple[str, str, str], TurnPredictor] = {}


def load_predictors(profile: Profile, settings: Settings) -> tuple[list[TurnPredictor], list[str]]:
    """Load (once per process) every available model; unavailable ones become warnings."""
    predictors, warnings = [], []
    for key, loader in predictor_loaders().items():
        cache_key = (key, profile.name, str(settings.checkpoints_dir))
        try:
            if cache_key not in _CACHE:
                _CACHE[cache_key] = loader(profile, settings)
            predictors.append(_CACHE[cache_key])
        except ModelUnavailableError as exc:
            warnings.append(str(exc))
    return predictors, warnings
