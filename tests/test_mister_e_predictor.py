"""MisterEPredictor: per-turn output over the analysis labels, the checkpoint it loads (with its
stage-1 encoders as checked components), and backend.analyze on a generated video."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from backend import predictors
from backend.analyze import analyze
from backend.checkpoints import read_checkpoint, write_checkpoint
from backend.dialogue import Turn
from backend.errors import ModelUnavailableError
from backend.labels import MELD7
from backend.mister_e_predictor import MisterEPredictor, label_index, load_predictor, map_probs
from backend.model_store import ModelStore
from backend.predictors import TurnInputs
from backend.registry import model_spec, resolve
from backend.schema import validate_analysis
from backend.settings import get_settings
from backend.synthetic_media import make_dialogue_video
from models.mister_e import MisterE
from tests.test_mister_e_training import train, write_csv_corpus

TURNS = [(0.3, 1.5), (2.0, 3.4), (4.0, 5.2)]
SRT = """1
00:00:00,300 --> 00:00:01,500
Rachel: That is wonderful, I am so happy!

2
00:00:02,000 --> 00:00:03,400
Ross: Stop it now, I hate this.

3
00:00:04,000 --> 00:00:05,200
Rachel: The table is by the door.
"""
SPEC = model_spec("mister-e")
COMMITTED = get_settings().checkpoints_dir / SPEC.checkpoints["offline"]
SHIPPED_OUTPUTS = Path(__file__).with_name("mister_e_shipped_outputs.json")


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """A checkpoints folder whose `mister-e` is a tiny model trained on a generated corpus."""
    root = tmp_path_factory.mktemp("mister-e-predictor")
    data = write_csv_corpus(root / "corpus", dialogues={"train": 4, "validation": 1})
    train(data, root / "checkpoints" / "mister-e", root / "cache")
    return root / "checkpoints"


def settings_with(checkpoints: Path):
    return get_settings().model_copy(update={"checkpoints_dir": checkpoints})


def predictor_of(checkpoints: Path, models: Path) -> MisterEPredictor:
    """The predictor of the built-in `mister-e` in `checkpoints` (no trained version in `models`)."""
    store = ModelStore(checkpoints, models)
    return load_predictor(store.active("mister-e", "mister-e"), store, settings_with(checkpoints))


def use_only_mister_e(monkeypatch) -> None:
    """Analyses run MiSTER-E alone, loaded from the settings' model store as the registry names it."""
    monkeypatch.setattr(predictors, "PREDICTOR_LOADERS", {"farcer": predictors.unavailable("switched off in this test")})
    monkeypatch.setattr(predictors, "_CACHE", {})


def tone(freq: float, seconds: float = 0.8, sr: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


# Four turns: audio and text; text only; audio only; text with an empty clip.
FIXTURE_TURNS = [
    Turn("A", 0, 1, "wonderful great happy"),
    Turn("B", 1, 2, "stop it now I hate this"),
    Turn("A", 2, 3, ""),
    Turn("B", 3, 4, "the table is by the door"),
]
FIXTURE_INPUTS = [
    TurnInputs(tone(600), 16000, None),
    TurnInputs(None, 16000, None),
    TurnInputs(tone(150), 16000, None),
    TurnInputs(np.zeros(0, np.float32), 16000, None),
]


def check_turn(out: dict, labels: tuple[str, ...], speech: bool, text: bool = True) -> None:
    assert list(out["probs"]) == list(labels)
    assert sum(out["probs"].values()) == pytest.approx(1.0, abs=1e-6)
    assert out["label"] == max(out["probs"], key=out["probs"].get)
    assert sum(out["gate"].values()) == pytest.approx(1.0, abs=1e-6)
    available = {"speech": speech, "text": text, "cross": speech and text}
    for expert, present in available.items():
        assert (out["experts"][expert] is not None) == present
        assert (out["gate"][expert] > 0) == present
    if not speech:
        assert out["gate"]["speech"] == 0.0 and out["gate"]["cross"] == 0.0 and out["gate"]["text"] == 1.0


def test_predict_marks_missing_audio_and_maps_labels_by_name(tiny_checkpoints, tmp_path):
    predictor = predictor_of(tiny_checkpoints, tmp_path)
    checkpoint = read_checkpoint(tiny_checkpoints / "mister-e")
    assert predictor.version == checkpoint.version and predictor.versions == checkpoint.versions()
    assert set(predictor.versions) == {"mister-e", "text", "speech"}
    rows, warnings = predictor.predict(FIXTURE_TURNS, FIXTURE_INPUTS, MELD7)
    assert len(rows) == 4
    for out, speech, text in zip(rows, [True, False, True, False], [True, True, False, True]):
        check_turn(out, MELD7, speech, text)
    assert "without audio" in warnings[0]

    reordered = ("joy", "anger", "neutral", "boredom")  # another order, a label the model lacks
    mapped, _ = predictor.predict(FIXTURE_TURNS, FIXTURE_INPUTS, reordered)
    for out, original in zip(mapped, rows):
        check_turn(out, reordered, out["experts"]["speech"] is not None, out["experts"]["text"] is not None)
        assert out["probs"]["boredom"] == 0.0
        kept = sum(original["probs"][l] for l in reordered[:3])
        assert out["probs"]["joy"] == pytest.approx(original["probs"]["joy"] / kept, rel=1e-5)


def test_a_dialogues_clips_are_packed_together_and_normalised_per_speaker(tiny_checkpoints, tmp_path):
    predictor = predictor_of(tiny_checkpoints, tmp_path)
    states = predictor.speech_encoder.states
    windows = []
    original = states.encode
    states.encode = lambda w: windows.append(len(w)) or original(w)
    try:
        x = predictor.embed(FIXTURE_TURNS, FIXTURE_INPUTS)
    finally:
        states.encode = original
    assert windows == [1]  # both clips in one Whisper window
    assert x["speech_present"][0].tolist() == [True, False, True, False]
    expected = predictor.speech_encoder.embed([FIXTURE_INPUTS[0].audio, FIXTURE_INPUTS[2].audio], ["A", "A"])
    torch.testing.assert_close(x["speech"][0, [0, 2]], expected)
    apart = predictor.speech_encoder.embed([FIXTURE_INPUTS[0].audio, FIXTURE_INPUTS[2].audio], ["A", "B"])
    assert not torch.allclose(apart, expected)  # another speaker: normalised with other statistics


def test_label_mapping_helpers():
    index = label_index(("a", "b", "c"), ("c", "x", "a"))
    assert index.tolist() == [2, -1, 0]
    probs = map_probs(np.array([[0.5, 0.3, 0.2]]), index)
    np.testing.assert_allclose(probs, [[0.2 / 0.7, 0.0, 0.5 / 0.7]])
    with pytest.raises(ModelUnavailableError, match="none of the analysis labels"):
        label_index(("a", "b"), ("x", "y"))


def test_analyze_with_tiny_checkpoint_passes_the_schema(tiny_checkpoints, dialogue, data_dir, monkeypatch):
    use_only_mister_e(monkeypatch)
    doc = validate_analysis(analyze(dialogue[0], subtitles=dialogue[1], settings=settings_with(tiny_checkpoints)))
    assert doc["models"]["mister_e"]["name"] == "MiSTER-E"
    assert doc["models"]["mister_e"]["version"] == read_checkpoint(tiny_checkpoints / "mister-e").version
    for turn in doc["turns"]:
        check_turn(turn["mister_e"], MELD7, speech=True)


def test_analyze_without_audio_uses_the_text_expert_only(tiny_checkpoints, tmp_path, data_dir, monkeypatch):
    use_only_mister_e(monkeypatch)
    silent = make_dialogue_video(tmp_path / "silent.mp4", TURNS, size=(320, 180), duration_s=6.0, audio=False)
    (tmp_path / "silent.srt").write_text(SRT, encoding="utf-8")
    doc = analyze(silent, subtitles=tmp_path / "silent.srt", settings=settings_with(tiny_checkpoints))
    for turn in doc["turns"]:
        check_turn(turn["mister_e"], MELD7, speech=False)
    assert any("only the text expert ran" in w for w in doc["warnings"])


def test_committed_checkpoint_through_analyze(dialogue, data_dir, monkeypatch):
    use_only_mister_e(monkeypatch)
    doc = validate_analysis(analyze(dialogue[0], subtitles=dialogue[1], profile="offline"))
    assert doc["models"]["mister_e"]["version"] == read_checkpoint(COMMITTED).version
    for turn in doc["turns"]:
        check_turn(turn["mister_e"], MELD7, speech=True)


def test_committed_checkpoint_follows_emotional_words_over_a_synthetic_voice(tmp_path, data_dir, monkeypatch):
    """Plainly emotional lines over generated speech-like audio: on them the text expert keeps a real
    share of the gate, and the mixed label follows it on most turns (the label-matched model said
    `anger` on every turn, with a text weight of 0.005-0.14). The emotion-neutral last line may leave
    the decision to the voice (the aligned RAVDESS pairs teach that)."""
    use_only_mister_e(monkeypatch)
    video = make_dialogue_video(tmp_path / "talk.mp4", TURNS, size=(320, 180), duration_s=6.0)
    (tmp_path / "talk.srt").write_text(SRT, encoding="utf-8")
    doc = analyze(video, subtitles=tmp_path / "talk.srt", profile="offline")
    outputs = [turn["mister_e"] for turn in doc["turns"]]
    assert all(out["gate"]["text"] > 0.3 for out in outputs[:2])  # "so happy!", "I hate this."
    text_labels = [max(out["experts"]["text"], key=out["experts"]["text"].get) for out in outputs]
    assert sum(out["label"] == label for out, label in zip(outputs, text_labels)) >= 2
    assert len({out["label"] for out in outputs}) > 1


def test_committed_checkpoint_gives_its_recorded_outputs(tmp_path):
    """The shipped weights give the outputs recorded when they were trained (the Whisper encoder runs
    in int8, whose kernels differ a little between CPUs: hence the tolerance)."""
    recorded = json.loads(SHIPPED_OUTPUTS.read_text())
    predictor = predictor_of(COMMITTED.parent, tmp_path)
    assert predictor.version == recorded["version"], "the shipped MiSTER-E changed: re-record the outputs"
    rows, warnings = predictor.predict(FIXTURE_TURNS, FIXTURE_INPUTS, MELD7)
    assert warnings == recorded["warnings"]
    for out, expected in zip(rows, recorded["rows"], strict=True):
        assert out["label"] == expected["label"]
        assert out["probs"] == pytest.approx(expected["probs"], abs=1e-3)
        assert out["gate"] == pytest.approx(expected["gate"], abs=1e-3)
        for name, votes in expected["experts"].items():
            assert (out["experts"][name] is None) == (votes is None)
            if votes is not None:
                assert out["experts"][name] == pytest.approx(votes, abs=1e-3)


def test_the_registry_names_the_builder_and_loader(tiny_checkpoints, tmp_path):
    settings = settings_with(tiny_checkpoints)
    store = ModelStore(tiny_checkpoints, tmp_path / "models")
    checkpoint = store.active(SPEC.name, SPEC.checkpoints["offline"])
    model = resolve(SPEC.builder)(checkpoint, store, "cpu")
    assert isinstance(model, MisterE) and not model.training
    predictor = resolve(SPEC.loader)(checkpoint, store, settings)
    assert isinstance(predictor, MisterEPredictor) and predictor.version == checkpoint.version
    assert predictor.model.config == model.config


def copy_of_committed(tmp_path: Path) -> Path:
    """A checkpoints folder holding a copy of the shipped MiSTER-E."""
    shutil.copytree(COMMITTED, tmp_path / "checkpoints" / "mister-e")
    return tmp_path / "checkpoints"


def test_a_changed_text_encoder_file_is_refused(tmp_path):
    checkpoints = copy_of_committed(tmp_path)
    weights = checkpoints / "mister-e" / "text" / "model.safetensors"
    state = load_file(str(weights))
    state["head.project.bias"] = state["head.project.bias"] + 0.01
    save_file(state, str(weights))
    with pytest.raises(ModelUnavailableError, match=r"text/model.safetensors does not match the sha256"):
        predictor_of(checkpoints, tmp_path / "models")


def test_a_retrained_text_encoder_is_refused_until_mister_e_is_retrained_on_it(tmp_path):
    checkpoints = copy_of_committed(tmp_path)
    text = read_checkpoint(checkpoints / "mister-e" / "text")
    state = load_file(str(text.file("model.safetensors")))
    state["head.project.bias"] = state["head.project.bias"] + 0.01
    save_file(state, str(text.file("model.safetensors")))
    fields = {k: text.manifest[k] for k in ("model", "config", "labels", "components", "data", "metrics")}
    retrained = write_checkpoint(text.path, **fields)  # a consistent text encoder of another version
    assert retrained.version != text.version
    with pytest.raises(ModelUnavailableError, match=f"trained with text-encoder version {text.version}"):
        predictor_of(checkpoints, tmp_path / "models")


def test_a_speech_only_checkpoint_cannot_serve(tiny_checkpoints, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(tiny_checkpoints / "mister-e", checkpoints / "mister-e")
    ckpt = read_checkpoint(checkpoints / "mister-e")
    fields = {k: ckpt.manifest[k] for k in ("model", "labels", "components", "data", "metrics")}
    write_checkpoint(ckpt.path, **fields, config={**ckpt.config, "modalities": ["speech"]})
    with pytest.raises(ModelUnavailableError, match="speech-only"):
        predictor_of(checkpoints, tmp_path / "models")


def test_paper_profile_without_its_checkpoint_is_a_clear_error(tmp_path):
    store = ModelStore(tmp_path, tmp_path / "models")
    with pytest.raises(ModelUnavailableError, match="mister-e-paper"):
        store.active(SPEC.name, SPEC.checkpoints["paper"])
