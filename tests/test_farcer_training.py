"""FARCER training and evaluation CLI on a tiny generated MELD-style corpus and image folder."""
from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open

from backend.checkpoints import read_checkpoint, write_checkpoint
from backend.errors import InputError, ModelUnavailableError
from backend.farcer_predictor import WEIGHTS, load_farcer
from backend.labels import IEMOCAP6, MELD7
from backend.model_store import open_model_store
from backend.settings import CHECKPOINTS_DIR, get_settings
from tests.fixtures_iemocap import make_iemocap_fixture
from training.__main__ import main
from models.farcer import Farcer
from training.farcer import FACE_WEIGHTS, PRIOR_SCALES, TrainConfig, drop_faces, make_samples, selection_key
from training.metrics import REPORT_KEYS

WORDS = ["oh", "my", "god", "you", "know", "what", "I", "mean", "this", "is", "the", "best", "day", "ever", "no",
         "way", "we", "were", "on", "a", "break"]
FER_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
TINY_CORE = ["--core", "new", "--vocab-size", "1000", "--hidden-size", "64", "--layers", "2", "--context", "1024"]


def write_meld(root: Path, dialogues: dict[str, int] | None = None, turns: int = 6, seed: int = 0) -> Path:
    """train/dev/test_sent_emo.csv with random lines; every label occurs in every split."""
    dialogues = dialogues or {"train": 6, "dev": 3, "test": 3}
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in dialogues.items():
        with open(root / f"{name}_sent_emo.csv", "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
                          "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"])
            row = 0
            for dia in range(n):
                for utt in range(turns):
                    label = MELD7[row % len(MELD7)]
                    text = " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))
                    out.writerow([row + 1, text, rng.choice(["Ross", "Rachel"]), label, "neutral", dia, utt,
                                  1, 1, f"00:00:{utt:02d},000", f"00:00:{utt:02d},900"])
                    row += 1
    return root


def write_faces(root: Path, per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for name in FER_CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))
    return root


def train_tiny(tmp: Path, extra: list[str] = ()) -> tuple[Path, Path, Path, Path]:
    """(meld dir, faces dir, core checkpoint, projector checkpoint) trained for one tiny epoch each: the
    core as a new version in the model store (ERC_DATA_DIR), the head into a folder of its own."""
    meld, faces = write_meld(tmp / "meld"), write_faces(tmp / "fer")
    head = tmp / "head"
    assert main(["train", "farcer", "--data", str(meld), *TINY_CORE, "--shots", "3", "--past-labels", "mixed",
                 "--epochs", "1"]) == 0
    (core,) = [v.path for v in open_model_store(get_settings()).versions("farcer-core") if not v.builtin]
    assert main(["train", "farcer", "--data", str(meld), "--core", str(core), "--faces", str(faces),
                 "--shots", "3", "--epochs", "1", "--lr", "1e-2", "--out", str(head), *extra]) == 0
    return meld, faces, core, head


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("farcer")
    mp = pytest.MonkeyPatch()
    mp.setenv("ERC_DATA_DIR", str(tmp / "data"))
    from backend.settings import get_settings

    get_settings.cache_clear()
    yield train_tiny(tmp)
    mp.undo()
    get_settings.cache_clear()


def test_core_checkpoint_is_a_hub_style_folder_with_chat_template(trained):
    _, _, core, _ = trained
    names = {p.name for p in core.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "manifest.json", "MODEL_CARD.md"} <= names
    checkpoint = read_checkpoint(core)
    assert checkpoint.model == "farcer-core" and checkpoint.components == {} and core.name == checkpoint.version
    assert checkpoint.metrics["best_epoch"] == 1 and checkpoint.data["train"]["text_weight"] == 1.0
    assert checkpoint.config["core_config"]["hidden_size"] == 64 and checkpoint.config["model"]["lm"] == "new"
    predicted = checkpoint.metrics["curve"][0]["val_predicted"]
    assert list(predicted) == list(checkpoint.labels) and sum(predicted.values()) == checkpoint.metrics["val"]["n"]
    with safe_open(str(core / "model.safetensors"), framework="pt") as f:
        names = f.keys()
        assert {f.get_tensor(k).dtype for k in names} == {torch.float16}
    _, processor = load_farcer(checkpoint, open_model_store(get_settings()), "cpu")
    assert processor.chat.assistant_end == "<|eot|>" and processor.labels == MELD7
    card = (core / "MODEL_CARD.md").read_text()
    assert "offline FARCER core LM" in card and "--core new" in card and "--out" not in card


def test_projector_checkpoint_holds_only_the_projector(trained):
    _, _, core, head = trained
    assert {p.name for p in head.iterdir()} == {WEIGHTS, "manifest.json", "MODEL_CARD.md"}
    with safe_open(str(head / WEIGHTS), framework="pt") as f:
        keys = set(f.keys())
    assert keys == {"projector.net.0.weight", "projector.net.0.bias"}
    checkpoint = read_checkpoint(head)
    face_encoder = read_checkpoint(CHECKPOINTS_DIR / "face-encoder")
    assert checkpoint.model == "farcer" and checkpoint.config["model"]["image_dim"] == 256
    assert checkpoint.components == {
        "core": {"kind": "checkpoint", "model": "farcer-core", "version": read_checkpoint(core).version},
        "face_encoder": {"kind": "checkpoint", "model": "face-encoder", "version": face_encoder.version},
    }
    assert checkpoint.versions() == {"farcer": checkpoint.version, "core": core.name,
                                     "face_encoder": face_encoder.version}
    farcer, _ = load_farcer(checkpoint, open_model_store(get_settings()), "cpu")
    with safe_open(str(head / WEIGHTS), framework="pt") as f:
        assert torch.equal(f.get_tensor("projector.net.0.weight"), farcer.projector.net[0].weight)
    card = (head / "MODEL_CARD.md").read_text()
    assert "paired with the corpus turns" in card and "neutral with chance 0.3" in card and "not stored here" in card


def test_a_head_whose_core_version_is_gone_refuses_to_load(trained, tmp_path):
    _, _, _, head = trained
    checkpoint = read_checkpoint(head)
    other = tmp_path / "other"
    other.mkdir()
    (other / WEIGHTS).write_bytes((head / WEIGHTS).read_bytes())
    components = {**checkpoint.components, "core": {**checkpoint.components["core"], "version": "0123456789ab"}}
    moved = write_checkpoint(other, model="farcer", config=checkpoint.config, labels=checkpoint.labels,
                             components=components, data=checkpoint.data, metrics=checkpoint.metrics)
    assert moved.version != checkpoint.version, "a component's version is part of the head's version"
    with pytest.raises(ModelUnavailableError, match="no farcer-core version '0123456789ab'"):
        load_farcer(moved, open_model_store(get_settings()), "cpu")


def test_a_core_outside_the_model_store_cannot_carry_a_head(trained, tmp_path):
    """A head names its core by version, so the core must be one the store can find."""
    meld, faces, core, _ = trained
    outside = tmp_path / "core-elsewhere"
    outside.mkdir()
    for path in core.iterdir():
        if path.name not in ("manifest.json", "MODEL_CARD.md"):
            (outside / path.name).write_bytes(path.read_bytes())
    stored = read_checkpoint(core)
    elsewhere = write_checkpoint(outside, model="farcer-core", config={**stored.config, "note": "a copy"},
                                 labels=stored.labels, data=stored.data, metrics=stored.metrics)
    with pytest.raises(InputError, match="is not in the model store"):
        main(["train", "farcer", "--data", str(meld), "--core", str(outside), "--faces", str(faces), "--shots", "0",
              "--epochs", "1", "--out", str(tmp_path / "head")])
    assert not (tmp_path / "head").exists() and elsewhere.version != stored.version


def test_evaluate_reports_every_utterance_and_the_last_turn_protocol(trained, tmp_path):
    meld, faces, _, head = trained
    version = read_checkpoint(head).version
    out = tmp_path / "report.json"
    assert main(["evaluate", "farcer", "--checkpoint", str(head), "--data", str(meld), "--faces", str(faces),
                 "--split", "test", "--protocol", "last-turn", "--past-labels", "gold", "--out", str(out),
                 "--record", "tiny test"]) == 0
    report = json.loads(out.read_text())
    assert set(REPORT_KEYS) <= set(report) and report["n"] == 3 * 6
    assert report["labels"] == list(MELD7) and sum(map(sum, report["confusion"])) == 18
    assert report["last_turn"]["n"] == 3 and set(REPORT_KEYS) <= set(report["last_turn"])
    assert report["oracle"] is True and report["past_labels"] == "gold" and report["shots"] == 3
    assert "--past-labels gold" in report["command"] and report["version"] == version
    recorded = read_checkpoint(head)
    assert recorded.version == version, "recording a result does not make a new version"
    names = [r["name"] for r in recorded.metrics["results"]]
    assert names == ["tiny test (ORACLE: gold past labels)", "tiny test (ORACLE: gold past labels), last turn"]
    card = (head / "MODEL_CARD.md").read_text()
    assert "tiny test (ORACLE: gold past labels): weighted F1" in card and "last turn" in card
    text_only = tmp_path / "text.json"
    assert main(["evaluate", "farcer", "--checkpoint", str(head), "--data", str(meld), "--split", "validation",
                 "--out", str(text_only)]) == 0
    report = json.loads(text_only.read_text())
    assert report["n"] == 18 and "last_turn" not in report and report["faces"] == "none (text only)"
    assert report["past_labels"] == "none" and report["oracle"] is False


def test_lora_variant_saves_adapters_and_projector_only(trained, tmp_path):
    meld, faces, core, _ = trained
    out = tmp_path / "lora"
    assert main(["train", "farcer", "--data", str(meld), "--core", core.name, "--faces", str(faces),
                 "--variant", "lora", "--shots", "0", "--epochs", "1", "--max-steps", "2", "--out", str(out)]) == 0
    with safe_open(str(out / WEIGHTS), framework="pt") as f:
        keys = set(f.keys())
    assert any("q_proj.lora_A" in k for k in keys) and any("v_proj.lora_B" in k for k in keys)
    assert all(k.startswith("projector.") or "lora_" in k for k in keys)
    checkpoint = read_checkpoint(out)
    assert checkpoint.config["variant"] == "lora" and checkpoint.data["train"]["max_steps"] == 2
    assert checkpoint.components["core"]["version"] == core.name  # --core named by its store version
    farcer, _ = load_farcer(checkpoint, open_model_store(get_settings()), "cpu")
    assert any("lora_A" in name for name, _ in farcer.lm.named_parameters())


def test_lora_on_the_top_layer_runs_text_rows_through_the_frozen_layer_once(trained, tmp_path, monkeypatch):
    """--lora-layers 1 on the 2-layer core: adapters only on the top layer, recorded for serving; text
    rows enter it with the bottom layer's states, computed once per row over two epochs."""
    meld, _, core, _ = trained
    frozen_rows, trained_rows, real_states, real_loss = [], [], Farcer.frozen_states, Farcer.packed_loss

    def frozen_states(self, rows, layers):
        frozen_rows.append(len(rows))
        return real_states(self, rows, layers)

    def packed_loss(self, rows, text_weight=0.0, start_layer=0):
        trained_rows.append((len(rows), start_layer))
        return real_loss(self, rows, text_weight, start_layer)

    monkeypatch.setattr(Farcer, "frozen_states", frozen_states)
    monkeypatch.setattr(Farcer, "packed_loss", packed_loss)
    out = tmp_path / "top"
    assert main(["train", "farcer", "--data", str(meld), "--core", core.name, "--variant", "lora", "--lora-layers",
                 "1", "--shots", "0", "--epochs", "2", "--out", str(out)]) == 0
    assert {start for _, start in trained_rows} == {1}
    assert 2 * sum(frozen_rows) == sum(n for n, _ in trained_rows) > 0
    with safe_open(str(out / WEIGHTS), framework="pt") as f:
        adapters = [k for k in f.keys() if "lora_" in k]
    assert adapters and all(".layers.1." in k for k in adapters)
    checkpoint = read_checkpoint(out)
    assert checkpoint.config["model"]["lora_layers"] == 1
    farcer, _ = load_farcer(checkpoint, open_model_store(get_settings()), "cpu")
    assert farcer.frozen_layers == 1
    # the prior correction was chosen on validation, and serving with it scores what the choice measured
    chosen = checkpoint.data["label_bias"]
    assert chosen["scale"] in PRIOR_SCALES and set(chosen["validation"]) == {str(s) for s in PRIOR_SCALES}
    assert chosen["validation"][str(chosen["scale"])] == max(chosen["validation"].values())
    assert list(farcer.config.label_bias) == chosen["bias"] == checkpoint.config["model"]["label_bias"]
    assert len(chosen["bias"]) in (0, len(MELD7)) and "Label prior correction: scale" in (out / "MODEL_CARD.md").read_text()
    report = tmp_path / "val.json"
    assert main(["evaluate", "farcer", "--checkpoint", str(out), "--data", str(meld), "--split", "validation",
                 "--out", str(report)]) == 0
    assert round(json.loads(report.read_text())["weighted_f1"], 4) == chosen["validation"][str(chosen["scale"])]


def test_choose_label_bias_rewrites_a_head_folder_and_refuses_test_data_and_store_versions(trained, tmp_path):
    meld, _, core, _ = trained
    out = tmp_path / "head"
    assert main(["train", "farcer", "--data", str(meld), "--core", core.name, "--variant", "lora", "--shots", "0",
                 "--epochs", "1", "--max-steps", "1", "--out", str(out)]) == 0
    before = read_checkpoint(out)
    report = tmp_path / "val.json"
    args = ["evaluate", "farcer", "--checkpoint", str(out), "--data", str(meld), "--out", str(report)]
    with pytest.raises(InputError, match="--split validation"):
        main([*args, "--split", "test", "--choose-label-bias"])
    assert main([*args, "--split", "validation", "--choose-label-bias"]) == 0
    after = read_checkpoint(out)
    assert after.data["label_bias"]["command"].startswith("python -m training evaluate farcer")
    assert after.config["model"]["label_bias"] == after.data["label_bias"]["bias"]
    assert after.manifest["files"] == before.manifest["files"]  # the weights are untouched
    chosen = after.data["label_bias"]
    assert round(json.loads(report.read_text())["weighted_f1"], 4) == chosen["validation"][str(chosen["scale"])]
    assert main(["train", "farcer", "--data", str(meld), "--core", core.name, "--variant", "lora", "--shots", "0",
                 "--epochs", "1", "--max-steps", "1"]) == 0
    stored = [v for v in open_model_store(get_settings()).versions("farcer") if not v.builtin][-1]
    with pytest.raises(InputError, match="never changes"):
        main(["evaluate", "farcer", "--checkpoint", stored.version, "--data", str(meld), "--split", "validation",
              "--out", str(report), "--choose-label-bias"])


def test_init_starts_a_head_from_another_heads_adapters_and_projector(trained, tmp_path):
    from safetensors.torch import load_file

    meld, faces, core, _ = trained
    base = ["train", "farcer", "--data", str(meld), "--core", core.name, "--faces", str(faces), "--shots", "0",
            "--epochs", "1", "--max-steps", "1"]
    first = tmp_path / "first"
    assert main([*base, "--variant", "lora", "--lr", "0.05", "--out", str(first)]) == 0
    again = tmp_path / "again"  # a step so small that the weights stay the ones it started from
    assert main([*base, "--variant", "lora", "--lr", "1e-12", "--init", str(first), "--out", str(again)]) == 0
    start, end = load_file(str(first / WEIGHTS)), load_file(str(again / WEIGHTS))
    assert set(start) == set(end)
    for name in start:
        torch.testing.assert_close(end[name], start[name], atol=1e-6, rtol=0)
    fresh = tmp_path / "fresh"  # without --init the same run starts elsewhere
    assert main([*base, "--variant", "lora", "--lr", "1e-12", "--out", str(fresh)]) == 0
    assert any(not torch.allclose(load_file(str(fresh / WEIGHTS))[n], start[n]) for n in start)
    assert read_checkpoint(again).data["init"]["version"] == read_checkpoint(first).version
    # --init alone: the head's shape (core, variant, LoRA settings) comes from the head it continues
    inherited = tmp_path / "inherited"
    assert main([*base, "--lr", "1e-12", "--lora-layers", "0", "--init", str(first), "--out", str(inherited)]) == 0
    assert read_checkpoint(inherited).config == read_checkpoint(again).config
    assert "--variant lora" in read_checkpoint(inherited).data["command"]
    with pytest.raises(InputError, match="adapters or projector"):
        main([*base, "--lora-layers", "1", "--init", str(first), "--out", str(tmp_path / "top")])
    with pytest.raises(InputError, match="differs from this run's in its variant"):
        main([*base, "--variant", "base", "--init", str(first), "--out", str(tmp_path / "bad")])


def test_the_face_slot_trains_alone_on_a_text_head_whose_text_labels_stay(trained, tmp_path):
    """--projector-only: the adapters and label bias are the --init text head's and only the projector
    moves, so text-only labels are the text head's; training pairs faces by the leak-free mix plus
    neutral-line dialogues, and validation reports (and selects on) leak-free views only."""
    from safetensors.torch import load_file

    meld, faces, core, _ = trained
    text_head, face_head = tmp_path / "text", tmp_path / "faces"
    assert main(["train", "farcer", "--data", str(meld), "--core", core.name, "--variant", "lora", "--shots", "0",
                 "--epochs", "1", "--max-steps", "1", "--out", str(text_head)]) == 0
    assert main(["train", "farcer", "--data", str(meld), "--init", str(text_head), "--faces", str(faces),
                 "--neutral-lines", "4", "--projector-only", "--shots", "0", "--epochs",
                 "1", "--max-steps", "2", "--lr", "0.05", "--out", str(face_head)]) == 0
    start, end = load_file(str(text_head / WEIGHTS)), load_file(str(face_head / WEIGHTS))
    adapters = [n for n in start if "lora_" in n]
    assert adapters and all(torch.equal(start[n], end[n]) for n in adapters)
    assert any(not torch.equal(start[n], end[n]) for n in start if n.startswith("projector."))
    before, after = read_checkpoint(text_head), read_checkpoint(face_head)
    assert after.config["model"]["label_bias"] == before.config["model"]["label_bias"]
    assert after.data["train"]["face_mix"] == [0.3, 0.3, 0.4] and after.data["train"]["neutral_lines"] == 4
    # a row without faces teaches a projector nothing: none is left faceless on purpose
    assert after.data["train"]["face_drop_dialogue"] == 0.0 and after.data["train"]["face_tolerance"] == 0.03
    views = after.metrics["val"]["views"]
    assert set(views) == {"text", "neutral", "random", "neutral-lines"} and views["neutral-lines"]["n"] == 60 * 6
    card = (face_head / "MODEL_CARD.md").read_text()
    assert "neutral with chance 0.3" in card and "Only the projector trained" in card and "- `neutral-lines`" in card
    assert "random-face view is within 0.03 of text only" in card and "among the steps whose random-face view" in card
    assert set(after.metrics["curve"][-1]["val_views"]) == set(views)

    def evaluate(head: Path, *extra: str) -> dict:
        out = tmp_path / f"{head.name}{len(extra)}.json"
        assert main(["evaluate", "farcer", "--checkpoint", str(head), "--data", str(meld), "--split", "validation",
                     "--out", str(out), *extra]) == 0
        return json.loads(out.read_text())

    text_before, text_after = evaluate(text_head), evaluate(face_head)
    assert text_before["confusion"] == text_after["confusion"] and text_after["faces_used"] is False
    assert "--neutral-lines" not in text_after["command"]
    lines = ["--neutral-lines", "3", "--face-corpus", "fer2013", "--face-data", str(faces)]
    read, unread = evaluate(face_head, *lines), evaluate(text_head, *lines)
    assert read["n"] == unread["n"] == 18 and read["faces"].startswith("neutral-lines: 3 dialogues")
    assert read["faces_used"] is True and unread["faces_used"] is False and "trained without faces" in unread["faces_note"]

    # the face weight, chosen on the validation views and written into a copy of the head
    weighted = tmp_path / "weighted"
    shutil.copytree(face_head, weighted)
    choose = ["--choose-face-weight", "--face-corpus", "fer2013", "--face-data", str(faces)]
    report = evaluate(weighted, *choose)
    head = read_checkpoint(weighted)
    chosen, weight = head.data["face_weight"], head.config["model"]["face_weight"]
    assert (head.version != after.version) == (weight != 1.0)  # the weight is part of the config
    assert set(chosen["validation"]) == {str(w) for w in FACE_WEIGHTS}
    # at weight 0 every turn gets its text-only labels, whatever face it shows
    assert chosen["validation"]["0.0"]["random"] == chosen["validation"]["0.0"]["text"] == chosen["validation"]["0.0"]["neutral"]
    assert weight == max(FACE_WEIGHTS, key=lambda w: (selection_key({"weighted_f1": chosen["validation"][str(w)]["pooled"],
                         "views": {k: {"weighted_f1": v} for k, v in chosen["validation"][str(w)].items()}}, 0.03), w))
    assert report["n"] == 3 * 18 + 60 * 6 and set(report["views"]) == {"text", "neutral", "random", "neutral-lines"}
    assert report["faces"].startswith("validation views") and f"Face weight {weight}" in (weighted / "MODEL_CARD.md").read_text()
    with pytest.raises(InputError, match="this head reads none"):
        evaluate(text_head, *choose)
    with pytest.raises(InputError, match="--projector-only trains the face slot of an existing LoRA head"):
        main(["train", "farcer", "--data", str(meld), "--core", core.name, "--faces", str(faces), "--projector-only"])
    with pytest.raises(InputError, match="give --faces"):
        main(["train", "farcer", "--data", str(meld), "--init", str(text_head), "--neutral-lines", "2"])


def test_iemocap_sub_dialogues_train_with_six_labels(tmp_path, data_dir):
    root = make_iemocap_fixture(tmp_path / "iemocap", utterances=12)
    out = tmp_path / "core"
    assert main(["train", "farcer", "--corpus", "iemocap", "--data", str(root), *TINY_CORE, "--shots", "0",
                 "--epochs", "1", "--max-steps", "3", "--out", str(out)]) == 0
    checkpoint = read_checkpoint(out)
    assert checkpoint.labels == IEMOCAP6 and checkpoint.data["train"]["targets"] == "last"
    assert set(checkpoint.metrics["val"]["labels"]) == set(IEMOCAP6)
    with pytest.raises(InputError, match="not the meld labels"):
        main(["evaluate", "farcer", "--checkpoint", str(out), "--data", str(write_meld(tmp_path / "m")),
              "--out", str(tmp_path / "r.json")])


def test_samples_stay_inside_one_dialogue():
    from backend.dialogue import Dialogue, Turn

    dialogues = [Dialogue(str(i), [Turn("A", None, None, "hi", "joy")] * n) for i, n in enumerate((30, 3, 25))]
    last = make_samples(dialogues, TrainConfig(targets="last"), seed=1)
    assert len(last) == 30 + 3 + 25
    assert all(s.end <= len(dialogues[s.dialogue]) and s.targets == (s.end - s.start - 1,) for s in last)
    lengths = [s.end - s.start for s in last if s.end >= 21]
    assert min(lengths) >= 5 and max(lengths) <= 21 and len(set(lengths)) > 3
    assert last == make_samples(dialogues, TrainConfig(targets="last"), seed=1)
    assert last != make_samples(dialogues, TrainConfig(targets="last"), seed=2)
    every = make_samples(dialogues, TrainConfig(targets="every"), seed=1)
    assert [(s.dialogue, s.start, s.end) for s in every] == [(0, 0, 21), (0, 21, 30), (1, 0, 3), (2, 0, 21), (2, 21, 25)]
    assert sum(len(s.targets) for s in every) == 58
    with pytest.raises(InputError, match="min_turns"):
        make_samples(dialogues, TrainConfig(min_turns=6, max_turns=5, targets="last"), seed=0)


def test_train_core_continues_a_core_and_keeps_its_history(trained, tmp_path):
    meld, _, core, _ = trained
    out = tmp_path / "core2"
    assert main(["train", "farcer", "--data", str(meld), "--core", str(core), "--train-core", "--shots", "0",
                 "--epochs", "1", "--max-steps", "1", "--out", str(out)]) == 0
    checkpoint = read_checkpoint(out)
    assert checkpoint.model == "farcer-core" and (out / "model.safetensors").exists() and not (out / WEIGHTS).exists()
    assert checkpoint.data["continued_from"][0]["command"] == read_checkpoint(core).data["command"]
    assert "--core new" in (out / "MODEL_CARD.md").read_text() and "--train-core" in checkpoint.data["command"]
    with pytest.raises(InputError, match="text-only core"):
        main(["train", "farcer", "--data", str(meld), "--core", str(core), "--train-core", "--variant", "lora",
              "--out", str(tmp_path / "x")])


def test_face_dropout_leaves_out_turns_or_whole_rows_and_spares_faceless_rows():
    faces = [np.full(4, i, np.float32) for i in range(200)]
    rng = random.Random(0)
    kept = [drop_faces(faces, TrainConfig(face_drop_turn=0.25, face_drop_dialogue=0.0), rng) for _ in range(20)]
    share = np.mean([f is not None for row in kept for f in row])
    assert 0.7 < share < 0.8 and all(f is None or f is faces[i] for row in kept for i, f in enumerate(row))
    whole = [drop_faces(faces, TrainConfig(face_drop_turn=0.0, face_drop_dialogue=0.5), rng) for _ in range(200)]
    assert {sum(f is None for f in row) for row in whole} == {0, len(faces)}
    assert 60 < sum(row[0] is None for row in whole) < 140
    state = rng.getstate()
    assert drop_faces([None, None], TrainConfig(), rng) == [None, None]
    assert drop_faces(faces[:3], TrainConfig(face_drop_turn=0.0, face_drop_dialogue=0.0), rng) == faces[:3]
    assert rng.getstate() == state, "rows without faces, or no dropout, keep the random stream of text-only runs"


def test_an_interrupted_run_resumes_where_it_stopped(trained, tmp_path, monkeypatch):
    """A run killed after its first saved state continues with --resume and ends exactly where the
    uninterrupted run ends (same adapters, same validation curve)."""
    import training.farcer as farcer_training

    meld, faces, core, _ = trained
    args = ["train", "farcer", "--data", str(meld), "--core", core.name, "--faces", str(faces), "--variant", "lora",
            "--lora-targets", "q_proj,v_proj,o_proj", "--lora-r", "4", "--shots", "0", "--epochs", "2",
            "--max-steps", "4", "--batch-size", "2", "--accumulate", "2", "--val-every", "2", "--val-dialogues", "1"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    save = farcer_training.save_state

    def killed_after_first_save(*a, **k):
        save(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(farcer_training, "save_state", killed_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(tmp_path / "cut")])
    assert read_checkpoint(tmp_path / "cut").data["finished"] is False, "the best weights so far are kept"
    with pytest.raises(InputError, match="never overwrites"):
        main([*args, "--out", str(tmp_path / "cut")])
    monkeypatch.setattr(farcer_training, "save_state", save)
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0

    whole, cut = read_checkpoint(tmp_path / "whole"), read_checkpoint(tmp_path / "cut")
    assert cut.data["finished"] is True and cut.data["resumed"] is True and cut.data["steps"] == 4
    assert [r["steps"] for r in cut.metrics["curve"]] == [r["steps"] for r in whole.metrics["curve"]] == [2, 4]
    assert [r["val_weighted_f1"] for r in cut.metrics["curve"]] == [r["val_weighted_f1"] for r in whole.metrics["curve"]]
    assert cut.config["model"]["lora_targets"] == ["q_proj", "v_proj", "o_proj"] and cut.config["model"]["lora_r"] == 4
    ends = [torch.load(tmp_path / f"{name}.state.pt", weights_only=False)["trainable"] for name in ("whole", "cut")]
    assert ends[0].keys() == ends[1].keys() and any("o_proj.lora_A" in k for k in ends[0])
    for key in ends[0]:
        torch.testing.assert_close(ends[0][key], ends[1][key])
    assert "LoRA r4/a16 on q_proj,v_proj,o_proj; 2 batch(es) per step" in (tmp_path / "cut" / "MODEL_CARD.md").read_text()

    # A run its time budget stops early is unfinished, and --resume with a new budget completes it.
    assert main([*args, "--max-minutes", "1e-6", "--out", str(tmp_path / "budget")]) == 0
    stopped = read_checkpoint(tmp_path / "budget")
    assert (stopped.data["finished"], stopped.data["steps"], stopped.data["planned_steps"]) == (False, 0, 4)
    assert main([*args, "--out", str(tmp_path / "budget"), "--resume"]) == 0
    assert read_checkpoint(tmp_path / "budget").data["finished"] is True


def test_an_untrained_core_is_evaluated_zero_shot_with_and_without_calibration(trained, tmp_path):
    from backend.farcer_predictor import load_core
    from backend.farcer_processor import FarcerProcessor
    from models.farcer import Farcer, FarcerConfig
    from training.farcer import content_free_bias

    meld, _, core, _ = trained
    lm, tokenizer = load_core(read_checkpoint(core), "cpu")
    processor = FarcerProcessor(tokenizer, MELD7)
    bias = content_free_bias(Farcer(lm, FarcerConfig(), processor.label_ids, processor.end_ids).eval(), processor, ())
    assert bias.shape == (7,) and torch.isclose(bias.exp().sum(), torch.tensor(1.0))
    reports = {}
    for calibrate in ([], ["--calibrate"]):
        out = tmp_path / f"zero{len(calibrate)}.json"
        assert main(["evaluate", "farcer", "--core", str(core), "--data", str(meld), "--split", "test",
                     "--out", str(out), *calibrate]) == 0
        reports[bool(calibrate)] = json.loads(out.read_text())
    assert reports[False]["calibrated"] is False and reports[True]["calibrated"] is True
    assert reports[True]["checkpoint"].startswith("untrained core") and reports[True]["version"] is None
    assert reports[True]["n"] == reports[False]["n"] == 18
    with pytest.raises(InputError, match="--past-labels none"):
        main(["evaluate", "farcer", "--core", str(core), "--data", str(meld), "--past-labels", "predicted",
              "--calibrate", "--out", str(tmp_path / "x.json")])


def write_corrections(root: Path, dialogues: int = 4) -> Path:
    """A `corpus` export-like CSV: 3-turn dialogues with a face crop per turn and who labelled it."""
    rng = np.random.default_rng(1)
    (root / "faces").mkdir(parents=True)
    rows = [["dialogue_id", "turn", "speaker", "text", "label", "face", "annotators", "labelled_at"]]
    for d in range(dialogues):
        for t in range(3):
            face = f"faces/v{d}_{t}.png"
            cv2.imwrite(str(root / face), rng.integers(0, 256, (40, 32, 3), dtype=np.uint8))
            rows.append([f"v{d}", t, "A" if t % 2 else "B", "oh my god", MELD7[(d + t) % 3], face, "ann;bob",
                         f"2026-11-0{d + 1}T10:00:00+00:00"])
    with open(root / "corpus.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return root / "corpus.csv"


def test_corrections_train_with_their_faces_and_validate_apart(trained, tmp_path):
    meld, faces, core, _ = trained
    corrections, out = write_corrections(tmp_path / "corrections"), tmp_path / "with-corrections"
    assert main(["train", "farcer", "--data", str(meld), "--core", core.name, "--faces", str(faces),
                 "--variant", "lora", "--shots", "0", "--epochs", "1", "--max-steps", "2", "--out", str(out),
                 "--corrections", str(corrections), "--corrections-weight", "2"]) == 0
    checkpoint = read_checkpoint(out)
    facts = checkpoint.data["corrections"]
    assert facts["turns"] == 12 and facts["dialogues"] == {"train": 3, "validation": 1} and facts["weight"] == 2.0
    assert facts["annotators"] == ["ann", "bob"] and facts["first"].startswith("2026-11-01")
    views = checkpoint.metrics["val"]["views"]
    assert set(views) == {"text", "neutral", "random", "corrections"}  # the corpus in its leak-free face views
    assert views["corrections"]["n"] == 3 and 3 * views["text"]["n"] + 3 == checkpoint.metrics["val"]["n"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "**Corrections** from" in card and "- `corrections`: weighted F1" in card


def test_retrain_compares_a_farcer_candidate_with_the_active_head(trained, tmp_path):
    meld, faces, core, _ = trained
    head = ["--data", str(meld), "--core", core.name, "--faces", str(faces), "--variant", "lora", "--shots", "0",
            "--epochs", "1", "--max-steps", "2"]
    assert main(["train", "farcer", *head]) == 0
    store = open_model_store(get_settings())
    active = [v for v in store.versions("farcer") if not v.builtin][-1]
    store.activate("farcer", active.version)
    corrections, report = write_corrections(tmp_path / "corrections"), tmp_path / "report.json"
    assert main(["retrain", "farcer", "--report", str(report), *head, "--corrections", str(corrections),
                 "--seed", "1"]) == 0
    result = json.loads(report.read_text())
    assert result["active_version"] == active.version and result["version"] != active.version
    comparison = result["comparison"]
    assert comparison["held-out corrections"]["candidate"]["n"] == comparison["held-out corrections"]["active"]["n"] == 3
    # heads that read faces are compared on the leak-free views of the 18 validation turns (text only, a
    # neutral face, a random-emotion face), never on label-matched faces
    assert comparison["corpus validation"]["candidate"]["n"] == comparison["corpus validation"]["active"]["n"] == 3 * 18


def test_a_step_whose_random_faces_overrule_the_words_is_kept_only_when_no_step_keeps_within_tolerance():
    cfg = TrainConfig(face_tolerance=0.03)

    def step(pooled: float, text: float, random_faces: float) -> dict:
        return {"weighted_f1": pooled, "views": {"text": {"weighted_f1": text}, "random": {"weighted_f1": random_faces}}}

    keeps, better_pooled_but_overruled = step(0.50, 0.55, 0.53), step(0.54, 0.55, 0.51)
    assert max([better_pooled_but_overruled, keeps], key=lambda r: selection_key(r, cfg.face_tolerance)) is keeps
    assert max([keeps, step(0.52, 0.55, 0.525)], key=lambda r: selection_key(r, cfg.face_tolerance))["weighted_f1"] == 0.52
    # no step keeps within tolerance: the pooled score decides, as without the rule
    assert max([better_pooled_but_overruled, step(0.53, 0.55, 0.45)],
               key=lambda r: selection_key(r, cfg.face_tolerance)) is better_pooled_but_overruled
    # a run without face views (text only, or corrections) is chosen on weighted F1 alone
    assert selection_key({"weighted_f1": 0.4}, 0.03) < selection_key({"weighted_f1": 0.5}, 0.03)
    assert selection_key({"weighted_f1": 0.4, "views": {"corpus": {}, "corrections": {}}}, 0.03) == (True, 0.4)
