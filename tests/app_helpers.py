"""For the app tests: instant deterministic doubles of the two models, their registration, and a
generated subtitled dialogue video."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend import predictors
from backend.dialogue import Turn
from backend.predictors import TurnInputs
from backend.example import EXAMPLE_SRT, write_example

SRT = EXAMPLE_SRT  # the subtitles of the app's example dialogue (backend.example)


def peaked(labels: tuple[str, ...], k: int, top: float = 0.55) -> dict[str, float]:
    """A distribution with `top` on labels[k % n] and the rest shared evenly."""
    rest = (1 - top) / (len(labels) - 1)
    return {label: (top if j == k % len(labels) else rest) for j, label in enumerate(labels)}


def _argmax(probs: dict[str, float]) -> str:
    return max(probs, key=probs.get)


@dataclass
class MisterEDouble:
    version: str = "test-1"
    versions: dict = field(default_factory=lambda: {"mister-e": "test-1"})
    calls: int = 0

    def predict(
        self, turns: list[Turn], inputs: list[TurnInputs], labels: tuple[str, ...], explain: bool = False
    ):
        self.calls += 1
        outputs = []
        for i, inp in enumerate(inputs):
            experts = {
                "speech": peaked(labels, i) if inp.audio is not None else None,
                "text": peaked(labels, i + 1, 0.4),
                "cross": peaked(labels, i, 0.7),
            }
            gate = (
                {"speech": 0.5, "text": 0.2, "cross": 0.3}
                if inp.audio is not None
                else {"speech": 0.0, "text": 0.4, "cross": 0.6}
            )
            probs = {
                label: sum(gate[e] * experts[e][label] for e in experts if experts[e] is not None)
                for label in labels
            }
            outputs.append({"label": _argmax(probs), "probs": probs, "gate": gate, "experts": experts})
        return outputs, []


@dataclass
class FarcerDouble:
    version: str = "test-1"
    versions: dict = field(default_factory=lambda: {"farcer": "test-1", "core": "core-1"})
    calls: int = 0

    def predict(
        self, turns: list[Turn], inputs: list[TurnInputs], labels: tuple[str, ...], explain: bool = False
    ):
        self.calls += 1
        outputs, lines = [], []
        for i, turn in enumerate(turns):
            probs = peaked(labels, 3 * i, 0.6)
            out = {"label": _argmax(probs), "probs": probs}
            current = [_text(f"{turn.speaker}: "), {"kind": "image", "text": "<image:face>"}, _text(f" {turn.text}")]
            if explain:
                query = _text(f" {turn.speaker}'s EMOTION LABEL:")
                out["prompt"] = [_text("SYSTEM:\nLabel the last turn.\n\nUSER:\nDIALOGUE:\n"), *lines, *current, query]
            past = f" ({turn.speaker}'s current emotion: {out['label']})"
            lines += [*current, {"kind": "label", "text": past, "speaker": turn.speaker, "label": out["label"]}, _text("\n")]
            outputs.append(out)
        return outputs, []


def _text(text: str) -> dict:
    return {"kind": "text", "text": text}


def install(monkeypatch, mister_e: MisterEDouble | None = None, farcer: FarcerDouble | None = None):
    """Register the doubles (None leaves that model unavailable) and forget loaded models."""
    loaders = {}
    for key, double in (("mister_e", mister_e), ("farcer", farcer)):
        loaders[key] = (
            predictors.unavailable("switched off in this test")
            if double is None
            else lambda profile, settings, d=double: d
        )
    monkeypatch.setattr(predictors, "PREDICTOR_LOADERS", loaders)
    monkeypatch.setattr(predictors, "_CACHE", {})
    return mister_e, farcer


def write_dialogue(folder: Path) -> tuple[Path, Path]:
    """A 6 s, 3-turn, two-speaker video and its SRT (the app's example, smaller)."""
    return write_example(folder, name="talk", size=(320, 180))
