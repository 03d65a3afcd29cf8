"""MisterEPredictor: per-turn output over the analysis labels, through backend.analyze on a generated video."""

from __future__ import annotations

import time

import numpy as np
import pytest

from backend import predictors
from backend.analyze import analyze
from backend.dialogue import Turn
from backend.errors import ModelUnavailableError
from backend.labels import MELD7
from backend.mister_e_predictor import MisterEPredictor, label_index, load_mister_e, map_probs
from backend.predictors import TurnInputs
from backend.profiles import OFFLINE, PAPER
from backend.schema import validate_analysis
from backend.settings import get_settings
from backend.synthetic_media import make_dialogue_video
from tests.test_mister_e_training import train, write_csv_corpus
from training.mister_e import load_checkpoint

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
COMMITTED = get_settings().checkpoints_dir / OFFLINE.mister_e_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """A checkpoints folder whose `mister-e` is a tiny model trained on a generated corpus."""
    root = tmp_path_factory.mktemp("mister-e-predictor")
    data = write_csv_corpus(root / "corpus", dialogues={"train": 4, "validation": 1})
    train(data, root / "checkpoints" / "mister-e", root / "cache")
    return root / "checkpoints"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("talk")
    subtitles = folder / "talk.srt"
    subtitles.write_text(SRT, encoding="utf-8")
    return make_dialogue_video(folder / "talk.mp4", TURNS, size=(320, 180), duration_s=6.0), subtitles


def tone(freq: float, seconds: float = 0.8, sr: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


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


def test_predict_marks_missing_audio_and_maps_labels_by_name(tiny_checkpoints):
    predictor = MisterEPredictor(load_checkpoint(tiny_checkpoints / "mister-e"))
    turns = [
        Turn("A", 0, 1, "wonderful great happy"),
        Turn("B", 1, 2, "stop it now I hate this"),
        Turn("A", 2, 3, ""),
        Turn("B", 3, 4, "the table is by the door"),
    ]
    inputs = [
        TurnInputs(tone(600), 16000, None),
        TurnInputs(None, 16000, None),
        TurnInputs(tone(150), 16000, None),
        TurnInputs(np.zeros(0, np.float32), 16000, None),
    ]
    rows, warnings = predictor.predict(turns, inputs, MELD7)
    assert len(rows) == 4 and len(predictor.version) == 12
    for out, speech, text in zip(rows, [True, False, True, False], [True, True, False, True]):
        check_turn(out, MELD7, speech, text)
    assert "without audio" in warnings[0]

    reordered = ("joy", "anger", "neutral", "boredom")  # another order, a label the model lacks
    mapped, _ = predictor.predict(turns, inputs, reordered)
    for out, original in zip(mapped, rows):
        check_turn(out, reordered, out["experts"]["speech"] is not None, out["experts"]["text"] is not None)
        assert out["probs"]["boredom"] == 0.0
        kept = sum(original["probs"][l] for l in reordered[:3])
        assert out["probs"]["joy"] == pytest.approx(original["probs"]["joy"] / kept, rel=1e-5)


def test_label_mapping_helpers():
    index = label_index(("a", "b", "c"), ("c", "x", "a"))
    assert index.tolist() == [2, -1, 0]
    probs = map_probs(np.array([[0.5, 0.3, 0.2]]), index)
    np.testing.assert_allclose(probs, [[0.2 / 0.7, 0.0, 0.5 / 0.7]])
    with pytest.raises(ModelUnavailableError, match="none of the analysis labels"):
        label_index(("a", "b"), ("x", "y"))


def test_analyze_with_tiny_checkpoint_passes_the_schema(tiny_checkpoints, video, data_dir, monkeypatch):
    monkeypatch.setattr(predictors, "predictor_loaders", lambda: {"mister_e": load_mister_e})
    settings = get_settings().model_copy(update={"checkpoints_dir": tiny_checkpoints})
    doc = validate_analysis(analyze(video[0], subtitles=video[1], settings=settings))
    assert doc["models"]["mister_e"]["name"] == "MiSTER-E"
    assert doc["models"]["mister_e"]["version"] == load_checkpoint(tiny_checkpoints / "mister-e").version
    for turn in doc["turns"]:
        check_turn(turn["mister_e"], MELD7, speech=True)


def test_analyze_without_audio_uses_the_text_expert_only(tiny_checkpoints, tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(predictors, "predictor_loaders", lambda: {"mister_e": load_mister_e})
    silent = make_dialogue_video(tmp_path / "silent.mp4", TURNS, size=(320, 180), duration_s=6.0, audio=False)
    (tmp_path / "silent.srt").write_text(SRT, encoding="utf-8")
    settings = get_settings().model_copy(update={"checkpoints_dir": tiny_checkpoints})
    doc = analyze(silent, subtitles=tmp_path / "silent.srt", settings=settings)
    for turn in doc["turns"]:
        check_turn(turn["mister_e"], MELD7, speech=False)
    assert any("only the text expert ran" in w for w in doc["warnings"])


@pytest.mark.skipif(
    not (COMMITTED / "model.safetensors").is_file(), reason="offline MiSTER-E checkpoint not built"
)
def test_committed_checkpoint_through_analyze(video, data_dir, monkeypatch):
    monkeypatch.setattr(predictors, "predictor_loaders", lambda: {"mister_e": load_mister_e})
    doc = validate_analysis(analyze(video[0], subtitles=video[1], profile="offline"))
    assert doc["models"]["mister_e"]["version"] == load_checkpoint(COMMITTED).version
    for turn in doc["turns"]:
        check_turn(turn["mister_e"], MELD7, speech=True)


def test_the_registry_loads_mister_e(tiny_checkpoints):
    settings = get_settings().model_copy(update={"checkpoints_dir": tiny_checkpoints})
    predictor = predictors.predictor_loaders()["mister_e"](OFFLINE, settings)
    assert isinstance(predictor, MisterEPredictor) and predictor.key == "mister_e"


def test_paper_profile_without_its_checkpoint_is_a_fast_clear_error(tmp_path):
    settings = get_settings().model_copy(update={"checkpoints_dir": tmp_path})
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="mister-e-paper"):
        load_mister_e(PAPER, settings)
    assert time.perf_counter() - started < 2.0
