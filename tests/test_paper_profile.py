"""The paper profile end to end at tiny size: MiSTER-E on a Qwen2 text backbone and a Qwen2-Audio tower,
FARCER on a Llama core with a ViT face encoder (tiny random models of those classes, saved to local
folders), trained through the CLI, installed as the profile's checkpoints and run on a video."""
from __future__ import annotations

import shutil

import pytest

from backend.analyze import analyze
from backend.checkpoints import read_checkpoint
from backend.errors import ModelUnavailableError
from backend.labels import MELD7
from backend.model_store import open_model_store
from backend.registry import model_spec, resolve
from backend.settings import get_settings
from backend.synthetic_media import make_dialogue_video
from tests.test_farcer_predictor import SRT, TURNS
from tests.test_farcer_training import WORDS, write_faces, write_meld
from tests.test_mister_e_training import TINY, run, write_csv_corpus
from tests.tiny_hf import save_llama, save_qwen2_audio, save_qwen2_text, save_vit


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """A checkpoints dir whose "mister-e-paper" and "farcer-paper" were trained here on tiny models."""
    tmp = tmp_path_factory.mktemp("paper")
    mp = pytest.MonkeyPatch()
    mp.setenv("ERC_DATA_DIR", str(tmp / "data"))
    mp.setenv("ERC_CHECKPOINTS_DIR", str(tmp / "checkpoints"))
    mp.setenv("ERC_PROFILE", "paper")
    get_settings.cache_clear()
    models = {
        "text": save_qwen2_text(tmp / "qwen2"),
        "audio": save_qwen2_audio(tmp / "qwen2-audio"),
        "core": save_llama(tmp / "llama", WORDS + ["Ross", "Rachel"]),
        "vit": save_vit(tmp / "vit"),
    }
    checkpoints = tmp / "checkpoints"
    corpus = write_csv_corpus(tmp / "corpus")
    assert run("train", "mister-e", "--corpus", "csv", "--data", corpus, "--out", checkpoints / "mister-e-paper",
               "--cache", tmp / "cache", "--text-backbone", models["text"], "--speech-backbone", models["audio"],
               *TINY, "--text-batch-size", "8", "--speech-epochs", "1", "--gradient-checkpointing") == 0
    meld, faces = write_meld(tmp / "meld", {"train": 2, "dev": 1, "test": 1}, turns=4), write_faces(tmp / "fer", 1)
    assert run("train", "farcer", "--data", meld, "--core", models["core"], "--face-encoder", models["vit"],
               "--faces", faces, "--shots", "0", "--epochs", "1", "--max-steps", "2", "--batch-size", "1",
               "--face-drop-turn", "0", "--face-drop-dialogue", "0",
               "--out", checkpoints / "farcer-paper") == 0
    video = make_dialogue_video(tmp / "talk.mp4", TURNS, size=(640, 360), duration_s=6.0)
    (tmp / "talk.srt").write_text(SRT, encoding="utf-8")
    yield tmp, models, video
    mp.undo()
    get_settings.cache_clear()


def test_manifests_name_the_tiny_backbones(paper):
    tmp, models, _ = paper
    mister_e = read_checkpoint(tmp / "checkpoints" / "mister-e-paper")
    text, speech = mister_e.nested("text"), mister_e.nested("speech")
    assert text.components["backbone"]["name"] == str(models["text"].resolve())
    assert speech.config["kind"] == "qwen2-audio-tower"
    assert speech.components["backbone"]["name"] == str(models["audio"].resolve())
    assert "model.safetensors" in speech.components["backbone"]["files"]
    farcer = read_checkpoint(tmp / "checkpoints" / "farcer-paper")
    assert farcer.components["core"]["name"] == str(models["core"].resolve())
    assert farcer.components["face_encoder"]["name"] == str(models["vit"].resolve())
    assert farcer.config["model"]["image_dim"] == 16  # the tiny ViT's CLS vector


def test_paper_profile_labels_every_turn_with_both_models(paper):
    tmp, _, video = paper
    doc = analyze(video, subtitles=tmp / "talk.srt", profile="paper", explain=True)
    assert set(doc["models"]) == {"mister_e", "farcer"}
    assert len(doc["turns"]) == len(TURNS)
    for turn in doc["turns"]:
        for key in ("mister_e", "farcer"):
            assert turn[key]["label"] in MELD7 and list(turn[key]["probs"]) == list(MELD7)
    assert all(turn["face"]["found"] for turn in doc["turns"])
    # FARCER read each found face through the ViT: one image slot per turn up to the labelled one
    last = doc["turns"][-1]["farcer"]["prompt"]
    assert [p["kind"] for p in last].count("image") == len(TURNS)
    # the speech expert heard every turn: its gate weight is part of each mixture
    assert all(turn["mister_e"]["experts"]["speech"] is not None for turn in doc["turns"])


@pytest.mark.parametrize("model, backbone", [("mister-e", "audio"), ("mister-e", "text"), ("farcer", "vit")])
def test_a_changed_backbone_folder_is_refused(paper, model, backbone):
    tmp, models, _ = paper
    original = tmp / f"{backbone}-original"
    shutil.copytree(models[backbone], original)
    try:
        shutil.rmtree(models[backbone])
        # another model of the same class and size in the folder training named
        builder = {"audio": save_qwen2_audio, "text": save_qwen2_text, "vit": save_vit}[backbone]
        builder(models[backbone], seed=1)
        store, settings = open_model_store(get_settings()), get_settings()
        spec = model_spec(model)
        with pytest.raises(ModelUnavailableError, match=f"{models[backbone].resolve()} .* not the one"):
            resolve(spec.loader)(store.active(spec.name, spec.checkpoints["paper"]), store, settings)
    finally:
        shutil.rmtree(models[backbone])
        shutil.move(original, models[backbone])


def test_the_card_names_the_paper_backbones(paper):
    tmp, models, _ = paper
    card = (tmp / "checkpoints" / "mister-e-paper" / "MODEL_CARD.md").read_text()
    assert f"`{models['text'].resolve()}` (not stored here)" in card
    assert f"the audio tower of `{models['audio'].resolve()}`" in card and "MiniLM" not in card


def test_bfloat16_backbones_serve_like_float32(paper, monkeypatch):
    """What a GPU gets by default (ERC_DTYPE auto): backbones and core in bfloat16, heads, projector and
    adapters in float32; the answers stay those of float32 weights (here on the CPU)."""
    import torch

    tmp, _, video = paper
    store, spec = open_model_store(get_settings()), {m: model_spec(m) for m in ("mister-e", "farcer")}
    docs = {}
    for dtype in ("float32", "bfloat16"):
        monkeypatch.setenv("ERC_DTYPE", dtype)
        get_settings.cache_clear()
        docs[dtype] = analyze(video, subtitles=tmp / "talk.srt", profile="paper")
    settings = get_settings()
    assert settings.torch_dtype() == torch.bfloat16
    mister_e = resolve(spec["mister-e"].loader)(store.active("mister-e", "mister-e-paper"), store, settings)
    assert next(mister_e.text_encoder.model.backbone.parameters()).dtype == torch.bfloat16
    assert next(mister_e.speech_encoder.model.backbone.parameters()).dtype == torch.bfloat16
    assert mister_e.text_encoder.model.head.project.weight.dtype == torch.float32
    farcer = resolve(spec["farcer"].loader)(store.active("farcer", "farcer-paper"), store, settings).farcer
    assert farcer.lm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert next(farcer.projector.parameters()).dtype == torch.float32
    for key in ("mister_e", "farcer"):
        for exact, half in zip(docs["float32"]["turns"], docs["bfloat16"]["turns"]):
            assert max(abs(exact[key]["probs"][c] - half[key]["probs"][c]) for c in MELD7) < 0.05, key


def test_a_missing_backbone_folder_is_refused(paper):
    tmp, models, _ = paper
    moved = tmp / "qwen2-away"
    shutil.move(models["text"], moved)
    try:
        store, settings = open_model_store(get_settings()), get_settings()
        spec = model_spec("mister-e")
        with pytest.raises(ModelUnavailableError, match="not on this machine; restore that folder"):
            resolve(spec.loader)(store.active(spec.name, "mister-e-paper"), store, settings)
    finally:
        shutil.move(moved, models["text"])


def test_a_hub_id_is_recorded_at_its_cached_revision_and_another_one_is_refused(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from backend.checkpoints import write_checkpoint
    from backend.hub_components import check_hub_component, hub_component

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--tiny-vit"
    for commit in ("a" * 40, "b" * 40):
        save_vit(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    component = hub_component("org/tiny-vit")
    assert component == {"kind": "hub", "name": "org/tiny-vit", "revision": "a" * 40}
    (tmp_path / "head").mkdir()
    head = write_checkpoint(tmp_path / "head", model="farcer", config={}, labels=MELD7,
                            components={"face_encoder": component})
    assert check_hub_component(head, "face_encoder") == component
    (repo / "refs" / "main").write_text("b" * 40)  # the cache moved on to another commit
    with pytest.raises(ModelUnavailableError, match=f"hf download org/tiny-vit --revision {'a' * 40}"):
        check_hub_component(head, "face_encoder")
