"""The `erc.analysis/1` JSON contract between backend, UI, CLI and tests.

    {schema, media:{path, sha256, duration_s, has_audio}, profile, labels:[...],
     models:{<key>:{name, version[, model, components:{name: version}]}},
     turns:[{index, speaker, start, end, text, face:{found, box:[x,y,w,h]|null, time_s?},
             <key>?:{label, probs, <the fields its registry entry lists>}}],
     timings_s:{load, media, features, ..., total}, warnings:[...]}

<key> is a model's analysis key in backend.registry (mister_e: gate and expert votes; farcer: the
prompt as segments [{kind: text|image|label, text}] when explained). `total` is analysis time
without model loading. `validate_analysis` checks a document against this description and is what
tests and the API use.
"""
from __future__ import annotations

import math
from typing import Any

from backend import registry
from backend.registry import ModelSpec

SCHEMA = "erc.analysis/1"
SEGMENT_KINDS = ("text", "image", "label")
_PROB_TOLERANCE = 1e-4


class SchemaError(ValueError):
    """A document does not follow `erc.analysis/1`; the message gives the JSON path."""


def _require(obj: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise SchemaError(f"{where}: expected an object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise SchemaError(f"{where}: missing keys {missing}")


def _check_probs(probs: Any, labels: list[str], where: str) -> None:
    if not isinstance(probs, dict) or list(probs) != labels:
        raise SchemaError(f"{where}: probabilities must be keyed by exactly the labels, in order")
    values = list(probs.values())
    if any(not isinstance(p, (int, float)) or p < 0 or math.isnan(p) for p in values):
        raise SchemaError(f"{where}: probabilities must be non-negative numbers")
    if abs(sum(values) - 1.0) > _PROB_TOLERANCE:
        raise SchemaError(f"{where}: probabilities sum to {sum(values):.6f}, not 1")


def _check_prediction(pred: Any, labels: list[str], where: str) -> None:
    _require(pred, ("label", "probs"), where)
    _check_probs(pred["probs"], labels, f"{where}.probs")
    best = max(pred["probs"], key=pred["probs"].get)
    if pred["probs"][pred["label"]] < pred["probs"][best] - _PROB_TOLERANCE:
        raise SchemaError(f"{where}.label: {pred['label']!r} is not the argmax of probs")


def _check_fields(pred: Any, spec: ModelSpec, labels: list[str], where: str) -> None:
    """The keys the registry says `spec` adds to each turn."""
    for field in spec.fields:
        if field.name not in pred:
            if field.optional:
                continue
            raise SchemaError(f"{where}: missing key {field.name!r}")
        value, at = pred[field.name], f"{where}.{field.name}"
        if field.kind == "weights":
            _require(value, field.over, at)
            if abs(sum(value[e] for e in field.over) - 1.0) > _PROB_TOLERANCE:
                raise SchemaError(f"{at}: weights must sum to 1")
        elif field.kind == "distributions":
            _require(value, field.over, at)
            for name in field.over:
                if value[name] is None:
                    if field.weighted_by and pred[field.weighted_by][name] != 0:
                        raise SchemaError(f"{where}.{field.weighted_by}.{name}: an unavailable {name} must weigh 0")
                    continue
                _check_probs(value[name], labels, f"{at}.{name}")
        elif field.kind == "segments":
            if not isinstance(value, list) or not all(
                isinstance(s, dict) and s.get("kind") in SEGMENT_KINDS and isinstance(s.get("text"), str) for s in value
            ):
                raise SchemaError(f"{at}: expected a list of {{kind: {'|'.join(SEGMENT_KINDS)}, text}} segments")


def validate_analysis(doc: Any) -> dict:
    """Raise `SchemaError` unless `doc` is a valid `erc.analysis/1` document; return it."""
    _require(doc, ("schema", "media", "profile", "labels", "models", "turns", "timings_s", "warnings"), "$")
    if doc["schema"] != SCHEMA:
        raise SchemaError(f"$.schema: expected {SCHEMA!r}, got {doc['schema']!r}")
    _require(doc["media"], ("path", "sha256", "duration_s", "has_audio"), "$.media")
    labels = doc["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise SchemaError("$.labels: expected a non-empty list of strings")
    for name, info in doc["models"].items():
        _require(info, ("name", "version"), f"$.models.{name}")
    _require(doc["timings_s"], ("total",), "$.timings_s")
    if not isinstance(doc["warnings"], list):
        raise SchemaError("$.warnings: expected a list")
    for i, turn in enumerate(doc["turns"]):
        where = f"$.turns[{i}]"
        _require(turn, ("index", "speaker", "start", "end", "text", "face"), where)
        if turn["index"] != i:
            raise SchemaError(f"{where}.index: expected {i}, got {turn['index']}")
        _require(turn["face"], ("found", "box"), f"{where}.face")
        box = turn["face"]["box"]
        if turn["face"]["found"] != (box is not None) or (box is not None and len(box) != 4):
            raise SchemaError(f"{where}.face: a found face has a 4-number box, no face has null")
        for spec in registry.MODELS:
            if spec.key in turn:
                _check_prediction(turn[spec.key], labels, f"{where}.{spec.key}")
                _check_fields(turn[spec.key], spec, labels, f"{where}.{spec.key}")
    return doc
