"""The model registry: every model the app runs, and everything the rest of the code needs to know
about it. The pipeline, the schema check, the UI (table columns, charts, accept buttons, teaching
view) and `python -m training versions` are driven from `MODELS`; a third model is one entry here
plus its code (a builder and a loader returning a `backend.predictors.TurnPredictor`).

Builders and loaders are named as "module:function" and imported on first use, so listing the
registry imports no model code. Code reads `registry.MODELS` when it runs (never a copy taken at
import), so tests can register a model by patching it.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from backend.errors import InputError
from models.mister_e import EXPERTS as MISTER_E_EXPERTS

FieldKind = Literal["weights", "distributions", "segments"]


@dataclass(frozen=True)
class TurnField:
    """A key a model adds to each turn's output besides `label` and `probs`.

    weights: {name: float} over `over`, summing to 1 (e.g. a gate);
    distributions: {name: probs over the labels, or null} over `over` (e.g. expert votes); a null
      entry must weigh 0 in the `weights` field named by `weighted_by`;
    segments: the prompt that produced the label, as [{kind: text|image|label, text}] (explain only).
    """

    name: str
    kind: FieldKind
    title: str
    over: tuple[str, ...] = ()
    weighted_by: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the model store / checkpoint manifest name
    key: str  # the per-turn key in erc.analysis/1
    title: str  # what the page calls it
    summary: str  # one line: what it reads and how it decides
    config_class: str  # "module:Class" of its config dataclass (in models/)
    builder: str  # "module:function" (checkpoint, store, device) -> the torch module with its weights
    loader: str  # "module:function" (checkpoint, store, settings) -> TurnPredictor
    checkpoints: Mapping[str, str]  # profile -> built-in checkpoint folder, the default active version
    fields: tuple[TurnField, ...] = ()
    explanation: str = ""  # how the teaching view reads its output
    colour: str = "#333333"

    def field(self, kind: FieldKind) -> TurnField | None:
        return next((f for f in self.fields if f.kind == kind), None)


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="mister-e",
        key="mister_e",
        title="MiSTER-E",
        summary="speech, text and cross-modal experts over utterance embeddings, mixed by a learned per-turn gate",
        config_class="models.mister_e:MisterEConfig",
        builder="backend.mister_e_predictor:build_model",
        loader="backend.mister_e_predictor:load_predictor",
        checkpoints={"offline": "mister-e", "paper": "mister-e-paper"},
        fields=(
            TurnField("gate", "weights", "gate", MISTER_E_EXPERTS),
            TurnField("experts", "distributions", "expert votes", MISTER_E_EXPERTS, weighted_by="gate"),
        ),
        explanation=(
            "Each expert votes a distribution over the labels; the gate weighs the experts for this turn, "
            "and the weighted votes give the label."
        ),
        colour="#9467bd",
    ),
    ModelSpec(
        name="farcer",
        key="farcer",
        title="FARCER",
        summary="an instruction-tuned causal LM reading the dialogue with a projected face embedding before each line",
        config_class="models.farcer:FarcerConfig",
        builder="backend.farcer_predictor:build_model",
        loader="backend.farcer_predictor:load_predictor",
        checkpoints={"offline": "farcer", "paper": "farcer-paper"},
        fields=(TurnField("prompt", "segments", "prompt", optional=True),),
        explanation=(
            "FARCER reads the dialogue up to this turn, with a projected face embedding in each image slot, "
            "and scores every label as the answer."
        ),
        colour="#d62728",
    ),
)



def find_spec(name: str) -> ModelSpec | None:
    """A registered model by store name ("mister-e") or analysis key ("mister_e"), else None."""
    return next((m for m in MODELS if name in (m.name, m.key)), None)


def model_spec(name: str) -> ModelSpec:
    """Like `find_spec`, but an unknown name is an InputError listing the registered models."""
    spec = find_spec(name)
    if spec is None:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(m.name for m in MODELS)}")
    return spec


def resolve(path: str) -> Any:
    """The object a "module:attribute" string names, imported now."""
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)
