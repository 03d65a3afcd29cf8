"""FARCER through the analysis pipeline: a tiny checkpoint built here, and the committed one."""
from __future__ import annotations

import shutil
import time

import pytest

from backend.analyze import analyze
from backend.errors import ModelUnavailableError
from backend.labels import MELD7
from backend.predictors import TurnInputs, predictor_loaders
from backend.profiles import OFFLINE, PAPER
from backend.schema import validate_analysis
from backend.settings import CHECKPOINTS_DIR, get_settings
from backend.synthetic_media import make_dialogue_video
from tests.test_farcer_training import train_tiny

TURNS = [(0.3, 1.5), (2.0, 3.4), (4.0, 5.2)]
SRT = """1
00:00:00,300 --> 00:00:01,500
Rachel: oh my god you know what

2
00:00:02,000 --> 00:00:03,400
Ross: we were on a break

3
00:00:04,000 --> 00:00:05,200
Rachel: no way
"""


@pytest.fixture(scope="module")
def dialogue(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dialogue")
    video = make_dialogue_video(folder / "talk.mp4", TURNS, size=(640, 360), duration_s=6.0)
    (folder / "talk.srt").write_text(SRT, encoding="utf-8")
    return video, folder / "talk.srt"


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """A checkpoints dir holding a tiny FARCER (trained on generated data) and the face encoder."""
    tmp = tmp_path_factory.mktemp("farcer")
    mp = pytest.MonkeyPatch()
    mp.setenv("ERC_DATA_DIR", str(tmp / "data"))
    get_settings.cache_clear()
    checkpoints = tmp / "checkpoints"
    shutil.copytree(CHECKPOINTS_DIR / "face-encoder", checkpoints / "face-encoder")
    train_tiny(tmp, ["--past-labels", "predicted"])
    shutil.copytree(tmp / "head", checkpoints / "farcer")
    mp.setenv("ERC_CHECKPOINTS_DIR", str(checkpoints))
    get_settings.cache_clear()
    yield checkpoints
    mp.undo()
    get_settings.cache_clear()


def _check_farcer_turns(doc: dict, explain: bool) -> None:
    validate_analysis(doc)
    assert doc["models"]["farcer"]["name"] == "FARCER"
    assert doc["models"]["farcer"]["version"].startswith("farcer-")
    for turn in doc["turns"]:
        out = turn["farcer"]
        assert list(out["probs"]) == list(MELD7) and out["label"] == max(out["probs"], key=out["probs"].get)
        assert ("prompt" in out) == explain


def test_tiny_checkpoint_through_analyze_with_explained_prompts(tiny_checkpoints, dialogue):
    video, subtitles = dialogue
    doc = analyze(video, subtitles=subtitles, explain=True)
    _check_farcer_turns(doc, explain=True)
    assert all(t["face"]["found"] for t in doc["turns"])
    first, last = doc["turns"][0]["farcer"], doc["turns"][2]["farcer"]
    assert first["prompt"].endswith("Rachel: <image:face> oh my god you know what\nRachel's EMOTION LABEL:<|eot|><|assistant|>\n")
    # Past turns carry the model's own earlier labels (the checkpoint was trained with past labels).
    second_label = doc["turns"][1]["farcer"]["label"]
    assert f"Ross: <image:face> we were on a break (Ross's current emotion: {second_label})\n" in last["prompt"]
    assert "Few-shot examples" not in last["prompt"]


def test_predictor_without_faces_and_prefix_encoded_once(tiny_checkpoints):
    from backend.dialogue import Turn

    predictor = predictor_loaders()["farcer"](OFFLINE, get_settings())
    assert predictor.key == "farcer" and predictor.past_labels == "predicted"
    turns = [Turn("A", 0.0, 1.0, "oh my god", label="fear"), Turn("B", 1.0, 2.0, "no way")]
    inputs = [TurnInputs(None, 16_000, None)] * 2
    outputs, warnings = predictor.predict(turns, inputs, MELD7)
    prefix = predictor.prefix
    again, _ = predictor.predict(turns, inputs, MELD7, explain=True)
    assert predictor.prefix is prefix and warnings == []
    assert [o["probs"] for o in outputs] == [o["probs"] for o in again]
    # The gold label on the input turn is never shown; the model's own label for turn 0 is.
    assert "<image:face>" not in again[1]["prompt"]
    assert f"A: oh my god (A's current emotion: {again[0]['label']})\nB: no way\n" in again[1]["prompt"]


def test_paper_profile_without_checkpoint_is_a_fast_clear_error(tiny_checkpoints):
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="FARCER checkpoint .*farcer-paper is missing"):
        predictor_loaders()["farcer"](PAPER, get_settings())
    assert time.perf_counter() - start < 2


def test_committed_checkpoint_through_analyze(dialogue, data_dir):
    if not (CHECKPOINTS_DIR / "farcer" / "farcer.json").is_file():
        pytest.skip("no committed FARCER checkpoint (checkpoints/farcer)")
    video, subtitles = dialogue
    _check_farcer_turns(analyze(video, subtitles=subtitles), explain=False)
