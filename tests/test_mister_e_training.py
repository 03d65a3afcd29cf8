"""MiSTER-E training and evaluation CLI on tiny generated corpora (generic CSV, IEMOCAP layout),
pseudo-pairs and modality dropping."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from backend.checkpoints import read_checkpoint
from backend.dialogue import Dialogue, Turn
from backend.errors import InputError, ModelUnavailableError
from backend.labels import IEMOCAP6, MELD7
from backend.mister_e_predictor import build_model, checkpoint_modalities
from backend.model_store import ModelStore
from backend.packaged import PACKAGED
from backend.settings import CHECKPOINTS_DIR
from backend.encoders import speech_components
from models.mister_e import MisterEConfig
from tests.fixtures_iemocap import kept_per_dialogue, make_iemocap_fixture
from training.__main__ import main
from training.metrics import REPORT_KEYS
from training.mister_e import (
    _Plan,
    _speech_train,
    held_dialogues,
    model_card,
    preset_name,
    stage2_speakers,
)
from training.pseudo_pairs import PairMix, SpeechBank, Stage2Dialogue, drop_modalities, drop_speech

SR = 16_000
WORDS = {
    "neutral": "the table is by the door",
    "joy": "wonderful great happy fun",
    "anger": "stop it now I hate this",
}
PITCH = {"neutral": 150.0, "joy": 600.0, "anger": 2400.0}
TINY = [
    "--preset",
    "tiny",
    "--epochs",
    "2",
    "--text-epochs",
    "1",
    "--speech-epochs",
    "3",
    "--text-embed-dim",
    "8",
    "--speech-embed-dim",
    "8",
    "--max-tokens",
    "16",
]


def write_csv_corpus(root, audio: bool = True, text: bool = True, dialogues: dict | None = None):
    """Dialogues of 4 turns whose words (and tone pitch) give the label; 3 of the 7 MELD labels."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["dialogue_id,turn,speaker,text,label,audio,split"]
    rng = np.random.default_rng(0)
    for split, n in (dialogues or {"train": 6, "validation": 2, "test": 2}).items():
        for d in range(n):
            for t in range(4):
                label = list(WORDS)[(d + t) % 3]
                clip = ""
                if audio:
                    clip = f"{split}{d}_{t}.wav"
                    time = np.arange(int(0.6 * SR)) / SR
                    tone = 0.3 * np.sin(2 * np.pi * PITCH[label] * (1 + 0.03 * rng.standard_normal()) * time)
                    sf.write(root / clip, tone.astype(np.float32), SR)
                words = " ".join(rng.permutation(WORDS[label].split())) if text else ""
                rows.append(f"{split}{d},{t},S{t % 2},{words},{label},{clip},{split}")
    path = root / "corpus.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def run(*argv) -> int:
    return main([str(a) for a in argv])


def train(data, out, cache, *extra, corpus: str = "csv") -> None:
    """`train mister-e` at the TINY sizes; it must succeed."""
    assert (
        run(
            "train",
            "mister-e",
            "--corpus",
            corpus,
            "--data",
            data,
            "--out",
            out,
            "--cache",
            cache,
            *TINY,
            *extra,
        )
        == 0
    )


@pytest.fixture(scope="module")
def csv_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("mister-e-csv")
    data = write_csv_corpus(root / "corpus")
    train(data, root / "ckpt", root / "cache")
    return data, root / "ckpt", root / "cache"


def evaluate(tmp_path, data, checkpoint, cache, *extra, corpus: str = "csv") -> dict:
    """`evaluate mister-e` on the test split; it must succeed; the report."""
    out = tmp_path / "report.json"
    argv = [
        "--checkpoint",
        checkpoint,
        "--corpus",
        corpus,
        "--data",
        data,
        "--split",
        "test",
        "--cache",
        cache,
    ]
    assert run("evaluate", "mister-e", *argv, "--out", out, *extra) == 0
    return json.loads(out.read_text())


def test_train_writes_a_complete_checkpoint(csv_checkpoint, tmp_path):
    _, out, _ = csv_checkpoint
    names = {p.name for p in out.iterdir()}
    assert names == {"manifest.json", "model.safetensors", "MODEL_CARD.md", "text", "speech"}
    ckpt = read_checkpoint(out)
    assert ckpt.model == "mister-e" and list(ckpt.manifest["files"]) == ["model.safetensors"]
    assert ckpt.labels == MELD7 and checkpoint_modalities(ckpt) == ("text", "speech")
    text, speech = ckpt.nested("text"), ckpt.nested("speech")
    assert (text.model, text.config["backbone"], text.components) == (
        "text-encoder", "minilm", {"backbone": PACKAGED["minilm"].component()}
    )
    assert speech.model == "speech-encoder" and speech.components == speech_components()
    assert ckpt.versions() == {"mister-e": ckpt.version, "text": text.version, "speech": speech.version}
    model = build_model(ckpt, ModelStore(tmp_path / "none", tmp_path / "none"), "cpu")
    assert model.config.text_dim == 8 and model.config.speech_dim == 8 and not model.training
    assert len(ckpt.metrics["history"]) == 2 and 1 <= ckpt.metrics["best_epoch"] <= 2
    assert set(ckpt.metrics["val"]) == {"main"}  # one corpus, no pseudo-pairs
    assert ckpt.metrics["stage1"]["text"]["n_train"] == text.data["n_train"] == 6 * 4
    # one invocation ran both stages: the encoders recorded the same command
    assert ckpt.data["stage1_command"] == ckpt.data["command"] == text.data["command"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "python -m training train mister-e --corpus csv" in card and "--out NEW_FOLDER" in card
    assert ckpt.version in card and text.version in card and "preset `tiny`" in card


def test_train_never_overwrites_a_checkpoint(csv_checkpoint):
    data, out, cache = csv_checkpoint
    with pytest.raises(InputError, match="already holds a checkpoint"):
        train(data, out, cache)
    with pytest.raises(InputError, match="already holds a checkpoint"):
        train(data, out, cache, "--stage", "1")  # its text encoder exists
    with pytest.raises(InputError, match="already holds a checkpoint"):
        train(data, out, cache, "--stage", "2")
    read_checkpoint(out)  # untouched: every file still matches its manifest


def test_stages_run_apart_into_one_folder(tmp_path):
    data = write_csv_corpus(tmp_path / "corpus", dialogues={"train": 3, "validation": 1})
    out = tmp_path / "ckpt"
    train(data, out, tmp_path / "cache", "--stage", "1")
    assert not (out / "manifest.json").exists()  # not a MiSTER-E checkpoint yet
    encoders = {m: read_checkpoint(out / m) for m in ("text", "speech")}
    train(data, out, tmp_path / "cache", "--stage", "2", "--lr", "0.01", "--lr-schedule", "cosine")
    ckpt = read_checkpoint(out)
    assert {m: ckpt.nested(m).version for m in encoders} == {m: e.version for m, e in encoders.items()}
    assert "--stage 1" in ckpt.data["stage1_command"] and "--stage 2" in ckpt.data["command"]
    # the optimizer's lr, read back after each epoch was set: 0.01 * (1 + cos(pi * epoch / 2)) / 2
    assert [row["lr"] for row in ckpt.metrics["history"]] == pytest.approx([0.01, 0.005])
    card = (out / "MODEL_CARD.md").read_text()
    assert card.count("--out NEW_FOLDER") == 2 and "AdamW lr 0.01\n(cosine)" in card
    # stage 1 into a folder holding one encoder trains only the missing one
    again = tmp_path / "again"
    again.mkdir()
    shutil.copytree(out / "text", again / "text")
    train(data, again, tmp_path / "cache", "--stage", "1")
    assert read_checkpoint(again / "text").version == encoders["text"].version
    assert read_checkpoint(again / "speech").data["n_train"] == encoders["speech"].data["n_train"]
    # stage 2 on encoders of two runs: the card gives each encoder's own command, then stage 2's
    train(data, again, tmp_path / "cache", "--stage", "2")
    assert read_checkpoint(again).data["stage1_command"] is None
    card = (again / "MODEL_CARD.md").read_text()
    commands = card.split("```")[1]
    text_at, speech_at, stage2_at = (commands.index(s) for s in ("# the text", "# the speech", "# stage 2"))
    assert text_at < speech_at < stage2_at
    assert commands.count("--stage 1") == 2 and commands.count("--stage 2") == 1


def test_train_without_out_adds_a_version_to_the_model_store(tmp_path, data_dir):
    splits = {"train": 3, "validation": 1, "test": 1}
    data = write_csv_corpus(tmp_path / "corpus", audio=False, dialogues=splits)
    assert run("train", "mister-e", "--corpus", "csv", "--data", data, "--cache", tmp_path / "cache", *TINY) == 0
    [stored] = [p for p in (data_dir / "models" / "mister-e").iterdir()]
    ckpt = read_checkpoint(stored)
    assert stored.name == ckpt.version and checkpoint_modalities(ckpt) == ("text",)
    assert ckpt.nested("text").model == "text-encoder"
    report = evaluate(tmp_path, data, ckpt.version, tmp_path / "cache")  # found by its version id
    assert report["n"] == 4


def test_evaluate_writes_exactly_the_report_keys_with_nulls_for_absent_classes(csv_checkpoint, tmp_path):
    data, out, cache = csv_checkpoint
    report = evaluate(tmp_path, data, out, cache)
    assert tuple(report) == REPORT_KEYS
    assert report["n"] == 2 * 4 and report["labels"] == list(MELD7)
    present = {"neutral", "joy", "anger"}
    assert {l for l, v in report["per_class_f1"].items() if v is not None} == present
    assert {l for l, v in report["per_class_recall"].items() if v is not None} == present
    assert 0.0 <= report["weighted_f1"] <= 1.0 and sum(map(sum, report["confusion"])) == 8


def test_evaluate_drop_modality_and_forced_modalities(csv_checkpoint, tmp_path, capsys):
    data, out, cache = csv_checkpoint
    full = evaluate(tmp_path, data, out, cache)
    dropped = evaluate(tmp_path, data, out, cache, "--drop-modality", "0.9", "--seed", "1")
    assert dropped["n"] == full["n"]  # a turn never loses both modalities
    text_only = evaluate(tmp_path, data, out, cache, "--modalities", "text")
    assert text_only["n"] == full["n"]
    with pytest.raises(InputError, match="drop-modality"):
        evaluate(tmp_path, data, out, cache, "--drop-modality", "1.5")


def test_text_only_corpus_skips_speech_with_a_notice(tmp_path, capsys):
    data = write_csv_corpus(
        tmp_path / "corpus", audio=False, dialogues={"train": 3, "validation": 1, "test": 1}
    )
    out = tmp_path / "ckpt"
    train(data, out, tmp_path / "cache")
    assert "no usable speech" in capsys.readouterr().err
    assert checkpoint_modalities(read_checkpoint(out)) == ("text",) and not (out / "speech").exists()


def test_pseudo_pairs_from_a_speech_corpus(tmp_path):
    text_data = write_csv_corpus(tmp_path / "text", audio=False, dialogues={"train": 3, "validation": 1})
    speech_data = write_csv_corpus(tmp_path / "speech", text=False, dialogues={"train": 3, "validation": 2})
    out = tmp_path / "ckpt"
    train(text_data, out, tmp_path / "cache", "--speech-corpus", "csv", "--speech-data", speech_data,
          "--pair-mix", "0.4,0.3,0.3")
    ckpt = read_checkpoint(out)
    metrics = ckpt.metrics
    assert ckpt.data["data"]["speech_clips"] == {"train": 12, "validation": 8, "test": 0}
    assert set(metrics["val"]) == {"main", "paired", "paired-neutral", "paired-random", "speech"}
    assert metrics["val"]["paired"]["n"] == metrics["val"]["main"]["n"] == 4
    assert metrics["val"]["speech"]["n"] == 8
    # the label-matched view leaks the label: it is reported but never chooses the epoch
    best = metrics["history"][metrics["best_epoch"] - 1]
    leak_free = [f for name, f in best["val_weighted_f1"].items() if name != "paired"]
    assert best["val_selection"] == pytest.approx(np.mean(leak_free), abs=1e-4)
    assert ckpt.data["train"]["pair_mix"] == [0.4, 0.3, 0.3]
    assert checkpoint_modalities(ckpt) == ("text", "speech")
    assert ckpt.nested("speech").data["n_train"] == 12  # the speech encoder learnt from the speech corpus
    card = (out / "MODEL_CARD.md").read_text()
    assert "mixed pseudo-pairs" in card and "0.3 a neutral clip" in card
    with pytest.raises(SystemExit):
        train(text_data, tmp_path / "bad", tmp_path / "cache", "--pair-mix", "0.5,0.5,0.5")


def test_held_out_speakers_split_the_speech_corpus_between_the_stages():
    clips = [Dialogue(f"c{a}{i}", [Turn(f"Actor_{a:02d}", 0.0, None, "x", "joy")], split="train")
             for a in range(1, 19) for i in range(2)]
    held = stage2_speakers(clips, 6)
    assert held == {f"Actor_{a:02d}" for a in (1, 4, 7, 10, 13, 16)}  # odd (male) and even (female) actors
    plan = _Plan(MELD7, [], clips, ("text", "speech"))
    args = argparse.Namespace(stage2_speakers=6)
    first, second = _speech_train(plan, args, 1), _speech_train(plan, args, 2)
    assert len(second) == 12 and {t.speaker for d in second for t in d.turns} == held
    assert len(first) == 24 and not {t.speaker for d in first for t in d.turns} & held
    with pytest.raises(InputError, match="between 1 and 17"):
        stage2_speakers(clips, 18)


def test_stage2_reads_only_speakers_the_speech_expert_never_trained_on(tmp_path):
    text_data = write_csv_corpus(tmp_path / "text", audio=False, dialogues={"train": 3, "validation": 1})
    speech_data = write_csv_corpus(tmp_path / "speech", text=False, dialogues={"train": 4, "validation": 2})
    header, *rows = speech_data.read_text().splitlines()
    rows = [r.split(",") for r in rows]
    for row in rows:  # one speaker per dialogue
        row[2] = f"P{row[0]}"
    speech_data.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
    out = tmp_path / "ckpt"
    train(text_data, out, tmp_path / "cache", "--speech-corpus", "csv", "--speech-data", speech_data,
          "--aligned-speech", "--stage2-speakers", "2")
    ckpt = read_checkpoint(out)
    assert ckpt.nested("speech").data["n_train"] == 8  # 2 of the 4 train speakers, 4 clips each
    assert ckpt.data["data"]["stage2_speakers"] == ["Ptrain0", "Ptrain2"] and ckpt.data["data"]["stage2_clips"] == 8
    assert ckpt.data["train"]["stage2_speakers"] == 2
    assert "Out of fold: the speech expert never trained on 2" in (out / "MODEL_CARD.md").read_text()
    with pytest.raises(InputError, match="give --speech-corpus"):
        run("train", "mister-e", "--corpus", "csv", "--data", text_data, "--stage2-speakers", "2")


def test_held_dialogues_are_an_evenly_spaced_share():
    dialogues = [Dialogue(f"d{i:02d}") for i in range(10)]
    assert held_dialogues(dialogues, 0.3) == {"d03", "d06", "d09"}
    with pytest.raises(InputError, match="holds 0 of 3 train dialogues out"):
        held_dialogues(dialogues[:3], 0.2)


def test_stage2_reads_only_dialogues_the_text_encoder_never_trained_on(tmp_path):
    data = write_csv_corpus(tmp_path / "corpus", audio=False, dialogues={"train": 4, "validation": 1})
    out = tmp_path / "ckpt"
    train(data, out, tmp_path / "cache", "--stage2-text-share", "0.5")
    ckpt = read_checkpoint(out)
    # train0..train3, 4 turns each: the text encoder reads train0 and train2, stage 2 train1 and train3
    assert ckpt.nested("text").data["n_train"] == 8 and ckpt.data["data"]["train_turns"] == 8
    assert ckpt.data["data"]["stage2_text_dialogues"] == 2 and ckpt.data["train"]["stage2_text_share"] == 0.5
    card = (out / "MODEL_CARD.md").read_text()
    assert "Out of fold (text): the text encoder never trained on 2 of the train dialogues" in card
    with pytest.raises(InputError, match=r"must be in \[0, 1\)"):
        run("train", "mister-e", "--corpus", "csv", "--data", data, "--stage2-text-share", "1")


def test_evaluation_views_pair_each_turn_with_the_speech_they_name(tmp_path, monkeypatch):
    """`evaluate --paired-speech`: every labelled turn hears a clip of its own emotion (matched, a
    pipeline check), of the neutral class or of any class, drawn from the speech corpus's split."""
    from training import mister_e

    text_data = write_csv_corpus(tmp_path / "text", audio=False, dialogues={"train": 3, "validation": 1, "test": 1})
    speech_data = write_csv_corpus(tmp_path / "speech", text=False, dialogues={"train": 3, "validation": 1, "test": 3})
    out, cache = tmp_path / "ckpt", tmp_path / "cache"
    train(text_data, out, cache, "--speech-corpus", "csv", "--speech-data", speech_data)
    ckpt, store = read_checkpoint(out), ModelStore(CHECKPOINTS_DIR, tmp_path / "store")
    texts = mister_e.split(mister_e._load("csv", text_data), "test")
    clips = mister_e.split(mister_e._load("csv", speech_data), "test")
    scored = []
    monkeypatch.setattr(mister_e, "score", lambda model, items, labels: scored.append(items) or {})
    mister_e.evaluate_dialogues(ckpt, store, "csv", texts, cache_root=cache)
    for view in ("matched", "neutral", "random"):
        mister_e.evaluate_dialogues(ckpt, store, "csv", texts, cache_root=cache, paired_speech=(view, clips))
    bank_items = mister_e.stage2_dialogues(
        clips, ckpt.labels, None, mister_e._embed(store.component(ckpt, "speech"), clips, cache), 1, 128
    )
    bank = SpeechBank(bank_items)
    neutral = ckpt.labels.index("neutral")

    def heard(item, i) -> int | None:  # the class of the clip turn i hears
        for label, vectors in bank.by_class.items():
            if any(np.allclose(item.speech[i], v) for v in vectors):
                return label
        return None

    [text_only], [matched], [to_neutral], [to_random] = scored  # one test dialogue per view
    assert not text_only.speech_present.any()
    for i, label in enumerate(matched.labels):
        assert matched.speech_present[i] == (label in bank.by_class)
        assert not matched.speech_present[i] or heard(matched, i) == label
    assert all(heard(to_neutral, i) == neutral for i in np.flatnonzero(to_neutral.speech_present))
    assert to_neutral.speech_present.any() == (neutral in bank.by_class)
    assert to_random.speech_present.all() and len(bank.by_class) > 1  # several classes to draw from
    assert (to_random.text == matched.text).all(), "the words stay the same in every view"
    with pytest.raises(InputError, match="--speech-corpus and --speech-data"):
        evaluate(tmp_path, text_data, out, cache, "--paired-speech", "neutral")


def test_iemocap_layout_trains_and_evaluates_six_labels(tmp_path):
    data = make_iemocap_fixture(tmp_path / "iemocap", dialogues_per_session=2, utterances=4, with_wav=True)
    out = tmp_path / "ckpt"
    train(data, out, tmp_path / "cache", corpus="iemocap")
    ckpt = read_checkpoint(out)
    assert ckpt.labels == IEMOCAP6 and checkpoint_modalities(ckpt) == ("text", "speech")
    report = evaluate(tmp_path, data, out, tmp_path / "cache", "--record", corpus="iemocap")
    assert tuple(report) == REPORT_KEYS and report["labels"] == list(IEMOCAP6)
    assert report["n"] == 2 * kept_per_dialogue(4)  # session 5 is the test split
    recorded = read_checkpoint(out)
    assert recorded.version == ckpt.version  # recording an evaluation does not make a new version
    [(command, result)] = recorded.metrics["evaluations"].items()
    assert "evaluate mister-e" in command and result["n"] == report["n"]
    assert command in (out / "MODEL_CARD.md").read_text()


def test_cli_errors_are_clear(tmp_path):
    data = write_csv_corpus(tmp_path / "corpus", audio=False, dialogues={"train": 1})
    with pytest.raises(InputError, match="--speech-corpus and --speech-data"):
        run("train", "mister-e", "--corpus", "csv", "--data", data, "--speech-corpus", "ravdess")
    with pytest.raises(SystemExit):
        run("train", "mister-e", "--corpus", "csv", "--data", data, "--modalities", "video")
    with pytest.raises(ModelUnavailableError, match="no mister-e version"):
        run(
            "evaluate",
            "mister-e",
            "--checkpoint",
            tmp_path / "none",
            "--corpus",
            "csv",
            "--data",
            data,
            "--out",
            tmp_path / "r.json",
        )
    with pytest.raises(ModelUnavailableError, match="is a text-encoder checkpoint, not a mister-e one"):
        run("evaluate", "mister-e", "--checkpoint", CHECKPOINTS_DIR / "mister-e" / "text", "--corpus", "csv",
            "--data", data, "--out", tmp_path / "r.json")
    with pytest.raises(InputError, match="--stage 1 needs --out"):
        run("train", "mister-e", "--corpus", "csv", "--data", data, "--stage", "1")
    with pytest.raises(InputError, match="stage-1"):
        run(
            "train",
            "mister-e",
            "--corpus",
            "csv",
            "--data",
            data,
            "--stage",
            "2",
            "--out",
            tmp_path / "empty",
        )


def dialogue(labels, text=True, speech=False, dim=3) -> Stage2Dialogue:
    n = len(labels)
    return Stage2Dialogue(
        "d",
        np.ones((n, dim), np.float32) * text,
        np.full(n, text),
        np.ones((n, dim), np.float32) * speech,
        np.full(n, speech),
        np.array(labels),
    )


def test_speech_bank_pairs_each_turn_with_a_clip_of_its_emotion():
    clips = Stage2Dialogue(
        "s",
        np.zeros((4, 1), np.float32),
        np.zeros(4, bool),
        np.array([[0.0], [0.1], [1.0], [1.1]], np.float32),
        np.ones(4, bool),
        np.array([0, 0, 1, 1]),
    )
    bank = SpeechBank([clips])
    paired = bank.pair(dialogue([1, 0, 2, -1], dim=1), np.random.default_rng(0))
    assert paired.speech_present.tolist() == [True, True, False, False]  # no clip of class 2, unlabelled turn
    assert paired.speech[0, 0] >= 1.0 and paired.speech[1, 0] < 0.5
    assert not paired.speech[2:].any()


def test_a_pair_mix_gives_neutral_and_random_clips_their_shares():
    clips = Stage2Dialogue(
        "s", np.zeros((3, 1), np.float32), np.zeros(3, bool),
        np.array([[0.0], [1.0], [2.0]], np.float32), np.ones(3, bool), np.array([0, 1, 2]),
    )
    bank, rng = SpeechBank([clips]), np.random.default_rng(0)
    turns = dialogue([2] * 3000, dim=1)
    neutral = bank.pair(turns, rng, PairMix(0.0, 1.0, 0.0), neutral=0)
    assert (neutral.speech[:, 0] == 0.0).all()
    mixed = bank.pair(turns, rng, PairMix(0.5, 0.2, 0.3), neutral=0).speech[:, 0]
    shares = [np.mean(mixed == c) for c in (0.0, 1.0, 2.0)]  # random clips spread over all 3 classes
    np.testing.assert_allclose(shares, [0.2 + 0.1, 0.1, 0.5 + 0.1], atol=0.03)
    with pytest.raises(ValueError, match="summing to 1"):
        PairMix(0.5, 0.5, 0.5)


def test_drop_speech_keeps_speech_where_there_is_no_text():
    rng = np.random.default_rng(0)
    d = dialogue([0] * 6, text=True, speech=True)
    d.text_present[:2] = False
    dropped = drop_speech(d, turn_p=0.0, dialogue_p=0.999, rng=rng)
    assert dropped.speech_present.tolist() == [True, True, False, False, False, False]
    assert not dropped.speech[2:].any() and d.speech_present.all()  # the input is not modified


def test_drop_modalities_never_empties_a_turn():
    rng = np.random.default_rng(0)
    d = dialogue(list(range(200)), text=True, speech=True)
    dropped = drop_modalities(d, 0.9, rng)
    assert (dropped.text_present | dropped.speech_present).all()
    assert 0.3 < 1 - dropped.text_present.mean() < 0.7 and 0.3 < 1 - dropped.speech_present.mean() < 0.7
    assert not dropped.text[~dropped.text_present].any()
    text_only = drop_modalities(dialogue([0] * 20, text=True, speech=False), 0.9, rng)
    assert text_only.text_present.all()


def test_the_shipped_card_is_rendered_from_its_manifest():
    shipped = read_checkpoint(CHECKPOINTS_DIR / "mister-e")
    assert model_card(shipped) == (shipped.path / "MODEL_CARD.md").read_text()
    assert preset_name(MisterEConfig.from_dict(shipped.config["model"])) == "small"


def test_aligned_speech_trains_and_selects_on_clips_with_their_own_words(tmp_path):
    text_data = write_csv_corpus(tmp_path / "text", audio=False, dialogues={"train": 3, "validation": 1})
    speech_data = write_csv_corpus(tmp_path / "speech", dialogues={"train": 3, "validation": 2})  # words + audio
    out = tmp_path / "ckpt"
    train(text_data, out, tmp_path / "cache", "--speech-corpus", "csv", "--speech-data", speech_data,
          "--aligned-speech")
    ckpt = read_checkpoint(out)
    assert set(ckpt.metrics["val"]) == {"main", "paired", "paired-neutral", "paired-random", "speech", "aligned"}
    assert ckpt.metrics["val"]["aligned"]["n"] == ckpt.metrics["val"]["speech"]["n"] == 8
    best = ckpt.metrics["history"][ckpt.metrics["best_epoch"] - 1]
    assert "aligned" in best["val_weighted_f1"]  # it takes part in choosing the epoch
    leak_free = [f for name, f in best["val_weighted_f1"].items() if name != "paired"]
    assert best["val_selection"] == pytest.approx(np.mean(leak_free), abs=1e-4)
    assert ckpt.data["data"]["aligned_speech"] is True
    assert ckpt.data["train"]["pair_mix"] == [0.3, 0.3, 0.4]  # the default mix leaks no label
    assert "Real aligned pairs too" in (out / "MODEL_CARD.md").read_text()
    with pytest.raises(InputError, match="--aligned-speech needs --speech-corpus"):
        run("train", "mister-e", "--corpus", "csv", "--data", text_data, "--aligned-speech", "--out", tmp_path / "x")


def test_speech_only_corpus_words_are_read_only_when_named(capsys):
    from backend.dialogue import Dialogue, Turn
    from training.mister_e import choose_modalities

    clips = [Dialogue("c1", [Turn("A", 0.0, 1.0, "Kids are talking by the door", label="anger", audio=Path("c1.wav"))])]
    assert choose_modalities("ravdess", clips, None) == ("speech",)
    assert "no usable text" in capsys.readouterr().err
    assert choose_modalities("ravdess", clips, ("text", "speech")) == ("text", "speech")
    assert "words are used because --modalities names text" in capsys.readouterr().err
