"""FARCER as a predictor: a tiny checkpoint built here, the committed one, and one on hub components."""
from __future__ import annotations

import re
import shutil
from dataclasses import asdict

import cv2
import numpy as np
import pytest

from backend.analyze import analyze
from backend.checkpoints import read_checkpoint, write_checkpoint
from backend.dialogue import Turn
from backend.errors import ModelUnavailableError
from backend.farcer_predictor import FarcerPredictor, load_predictor
from backend.labels import MELD7
from backend.model_store import open_model_store
from backend.predictors import TurnInputs
from backend.schema import validate_analysis
from backend.settings import CHECKPOINTS_DIR, get_settings
from backend.synthetic_media import make_dialogue_video
from models.farcer import FarcerConfig
from tests.emotional_lines import LINES, right
from tests.test_farcer_training import train_tiny
from training.pseudo_pairs import NEUTRAL_LINES

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
    """A checkpoints dir holding a tiny FARCER head (trained on generated data; its core is a version in
    the model store of ERC_DATA_DIR) and the face encoder it was trained with."""
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


@pytest.fixture
def shipped(monkeypatch, data_dir):
    """The repository's checkpoints (the module's tiny ones are set for the whole module)."""
    monkeypatch.setenv("ERC_CHECKPOINTS_DIR", str(CHECKPOINTS_DIR))
    get_settings.cache_clear()
    yield CHECKPOINTS_DIR
    get_settings.cache_clear()


def active_farcer() -> FarcerPredictor:
    settings = get_settings()
    store = open_model_store(settings)
    return load_predictor(store.active("farcer", "farcer"), store, settings)


def text(prompt: list[dict]) -> str:
    return "".join(piece["text"] for piece in prompt)


def _check_farcer_turns(doc: dict, explain: bool) -> None:
    validate_analysis(doc)
    assert doc["models"]["farcer"]["name"] == "FARCER"
    assert re.fullmatch(r"[0-9a-f]{12}", doc["models"]["farcer"]["version"])
    for turn in doc["turns"]:
        out = turn["farcer"]
        assert list(out["probs"]) == list(MELD7) and out["label"] == max(out["probs"], key=out["probs"].get)
        assert ("prompt" in out) == explain


def test_tiny_checkpoint_through_analyze_with_explained_prompts(tiny_checkpoints, dialogue):
    video, subtitles = dialogue
    doc = analyze(video, subtitles=subtitles, explain=True)
    _check_farcer_turns(doc, explain=True)
    assert doc["models"]["farcer"]["version"] == read_checkpoint(tiny_checkpoints / "farcer").version
    assert all(t["face"]["found"] for t in doc["turns"])
    first, last = doc["turns"][0]["farcer"], doc["turns"][2]["farcer"]
    assert text(first["prompt"]).endswith(
        "Rachel: <image:face> oh my god you know what\nRachel's EMOTION LABEL:<|eot|><|assistant|>\n"
    )
    # Past turns carry the model's own earlier labels (the checkpoint was trained with past labels).
    second_label = doc["turns"][1]["farcer"]["label"]
    assert f"Ross: <image:face> we were on a break (Ross's current emotion: {second_label})\n" in text(last["prompt"])
    assert {"kind": "label", "text": f" (Ross's current emotion: {second_label})", "speaker": "Ross",
            "label": second_label} in last["prompt"]
    assert "Few-shot examples" not in text(last["prompt"])


def test_predictor_without_faces_and_prefix_encoded_once(tiny_checkpoints):
    predictor = active_farcer()
    checkpoint = read_checkpoint(tiny_checkpoints / "farcer")
    assert predictor.past_labels == "predicted"
    assert predictor.version == checkpoint.version and predictor.versions == checkpoint.versions()
    assert set(predictor.versions) == {"farcer", "core", "face_encoder"}
    turns = [Turn("A", 0.0, 1.0, "oh my god", label="fear"), Turn("B", 1.0, 2.0, "no way")]
    inputs = [TurnInputs(None, 16_000, None)] * 2
    outputs, warnings = predictor.predict(turns, inputs, MELD7)
    prefix = predictor.prefix
    again, _ = predictor.predict(turns, inputs, MELD7, explain=True)
    assert predictor.prefix is prefix and warnings == []
    assert [o["probs"] for o in outputs] == [o["probs"] for o in again]
    # The gold label on the input turn is never shown; the model's own label for turn 0 is.
    assert all(piece["kind"] != "image" for piece in again[1]["prompt"])
    assert f"A: oh my god (A's current emotion: {again[0]['label']})\nB: no way\n" in text(again[1]["prompt"])
    assert [p["label"] for p in again[1]["prompt"] if p["kind"] == "label"] == [again[0]["label"]]


def test_checkpoint_on_hub_components_loads_the_lm_and_vit_by_name(tmp_path, data_dir):
    """The paper profile's layout: core and face encoder are Hugging Face models named in the manifest
    (tiny local ones here), and only the projector is stored."""
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTImageProcessorPil, ViTModel

    from backend.farcer_predictor import save_trainable
    from backend.farcer_processor import FarcerProcessor
    from benchmarks.farcer_incremental import word_tokenizer
    from models.farcer import Farcer

    tokenizer = word_tokenizer(["oh", "my", "god", "hi", "bye", "A", "B"])
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **tiny))
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    vit = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32,
                    patch_size=16)
    ViTModel(vit, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    config = FarcerConfig(image_dim=16)
    processor = FarcerProcessor(tokenizer, MELD7)
    head = tmp_path / "head"
    head.mkdir()
    save_trainable(Farcer(lm, config, processor.label_ids, processor.end_ids), head / "trainable.safetensors")

    def write(vision: str):
        components = {"core": {"kind": "hub", "name": str(tmp_path / "lm")}, "face_encoder": {"kind": "hub", "name": vision}}
        return write_checkpoint(head, model="farcer", config={"model": asdict(config), "variant": "base"},
                                labels=MELD7, components=components, data={"faces": "a face folder"})

    settings = get_settings()
    predictor = load_predictor(write(str(tmp_path / "vit")), open_model_store(settings), settings)
    crops = [np.zeros((48, 40, 3), np.uint8), np.full((20, 20, 3), 200, np.uint8)]
    turns = [Turn("A", None, None, "oh my god"), Turn("B", None, None, "bye")]
    outputs, _ = predictor.predict(turns, [TurnInputs(None, 16_000, c) for c in crops], MELD7, explain=True)
    assert len(outputs) == 2 and {o["label"] for o in outputs} <= set(MELD7)
    assert [p["kind"] for p in outputs[1]["prompt"]].count("image") == 2
    with pytest.raises(ModelUnavailableError, match="not available"):
        load_predictor(write("no-such-org/no-such-vit"), open_model_store(settings), settings)


def test_committed_checkpoint_through_analyze(dialogue, shipped):
    video, subtitles = dialogue
    doc = analyze(video, subtitles=subtitles)
    _check_farcer_turns(doc, explain=False)
    assert doc["models"]["farcer"]["version"] == read_checkpoint(shipped / "farcer").version


def test_a_head_trained_without_faces_gets_no_image_slots(shipped, tmp_path):
    """Found faces must not reach a projector that never trained: the shipped head's weights under a
    manifest that says they were trained text only (as the text head d81387661660 they grew from was)."""
    store = open_model_store(get_settings())
    face_head = store.find("farcer", "farcer")
    assert face_head.data["faces"] is not None and load_predictor(face_head, store, get_settings()).faces is not None
    folder = tmp_path / "text-only"
    shutil.copytree(face_head.path, folder)
    manifest = {k: v for k, v in face_head.manifest.items() if k not in ("format", "files", "version")}
    write_checkpoint(folder, **{**manifest, "data": {**manifest["data"], "faces": None}})
    predictor = load_predictor(read_checkpoint(folder), store, get_settings())
    face = np.full((48, 48, 3), 128, dtype=np.uint8)
    inputs = [TurnInputs(None, 16000, face), TurnInputs(None, 16000, None)]
    turns = [Turn("A", 0.0, 1.0, "I am so happy today!"), Turn("B", 1.0, 2.0, "Me too.")]
    assert predictor.faces is None and predictor.face_vectors(inputs) == [None, None]
    rows, _ = predictor.predict(turns, inputs, MELD7, explain=True)
    assert all(s["kind"] != "image" for row in rows for s in row["prompt"])


@pytest.mark.parametrize("face", ["neutral", "happy", "angry", "sad", "surprise", "fear"])
def test_committed_head_follows_emotional_words_beside_any_face(shipped, fer_dir, face):
    """Issue 12: plainly emotional lines, each beside a FER2013 test face of one emotion (faces the face
    encoder never trained on), are labelled by their words; a head that reads faces is shown every one.
    Measured with the shipped head: 6 of 6 beside happy, sad and surprised faces, 5 of 6 (disgust read as
    anger) beside neutral, angry and afraid ones."""
    paths = sorted((fer_dir / "test" / face).glob("*.jpg"))[: len(LINES)]
    crops = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    turns = [Turn(("Ann", "Ben")[speaker], float(i), i + 1.0, line) for i, (speaker, _, line) in enumerate(LINES)]
    predictor = active_farcer()
    rows, _ = predictor.predict(turns, [TurnInputs(None, 16_000, crop) for crop in crops], MELD7, explain=True)
    assert right([row["label"] for row in rows]) >= 4
    shown = [sum(piece["kind"] == "image" for piece in row["prompt"]) for row in rows]
    assert shown == ([i + 1 for i in range(len(LINES))] if predictor.faces is not None else [0] * len(LINES))


def test_committed_head_reads_the_face_where_the_words_say_nothing(shipped, fer_dir):
    """Issue 12, the other half of per-turn evidence: the six held-out emotion-neutral test lines are
    labelled by the face beside them. Measured with the shipped head (face weight 0.7): joy on 5 of 6
    beside happy test faces, anger on 3 of 6 beside angry ones (2 more sadness), neutral on 6 of 6 beside
    neutral faces and without faces."""
    predictor = active_farcer()
    assert predictor.faces is not None and predictor.farcer.config.face_weight == read_checkpoint(
        shipped / "farcer").config["model"].get("face_weight", 1.0)
    lines = NEUTRAL_LINES["test"]
    turns = [Turn(("Ann", "Ben")[i % 2], float(i), i + 1.0, line) for i, line in enumerate(lines)]

    def labels(face: str | None) -> list[str]:
        paths = sorted((fer_dir / "test" / face).glob("*.jpg"))[: len(lines)] if face else [None] * len(lines)
        crops = [None if p is None else cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
        rows, _ = predictor.predict(turns, [TurnInputs(None, 16_000, crop) for crop in crops], MELD7)
        return [row["label"] for row in rows]

    assert labels("happy").count("joy") >= 4 and labels("angry").count("anger") >= 2
    assert labels("neutral").count("neutral") >= 5 and labels(None).count("neutral") >= 5
