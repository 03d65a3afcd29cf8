"""Training on a corpus plus annotators' corrections (`--corrections`): sources, the seeded split by
dialogue, the weight, and what the model card says."""

from __future__ import annotations

import numpy as np
import pytest

from backend.checkpoints import read_checkpoint
from backend.current_label import POLICY
from backend.dialogue import Dialogue, Turn
from backend.errors import InputError
from backend.labels import MELD7
from backend.service import Service
from backend.settings import Settings
from tests.test_mister_e_training import TINY, run, write_csv_corpus
from training.corrections import MIN_DIALOGUES, Corrections, load_corrections, split_dialogues


def _dialogues(n: int) -> list[Dialogue]:
    return [Dialogue(f"d{i}", [Turn("A", 0.0, 1.0, "hi", "joy")]) for i in range(n)]


def test_split_is_by_dialogue_and_seeded():
    dialogues = _dialogues(8)
    train, validation = split_dialogues(dialogues, seed=1)
    assert len(validation) == 2 and {d.id for d in train} | {d.id for d in validation} == {d.id for d in dialogues}
    assert not {d.id for d in train} & {d.id for d in validation}
    assert [d.id for d in split_dialogues(dialogues, seed=1)[1]] == [d.id for d in validation], "seeded"
    assert split_dialogues(_dialogues(MIN_DIALOGUES - 1), seed=1)[1] == [], "too few: all train"


def test_weight_repeats_corrected_dialogues_per_epoch():
    corrections = Corrections("x", [], [], 0, [], None, None, weight=2.5)
    rng = np.random.default_rng(0)
    counts = [len(corrections.epoch(["a", "b"], rng)) for _ in range(400)]
    assert set(counts) <= {4, 5, 6} and abs(np.mean(counts) - 5.0) < 0.2


def test_a_corpus_csv_with_enough_dialogues_holds_some_out(tmp_path, data_dir):
    corpus = write_csv_corpus(tmp_path / "corpus", audio=False, dialogues={"train": 3, "validation": 1})
    corrected = write_csv_corpus(tmp_path / "corrected", audio=False, dialogues={"train": 4})
    loaded = load_corrections(str(corrected), MELD7, seed=0)
    assert (len(loaded.train), len(loaded.validation)) == (3, 1) and loaded.validation_from == "corrections"
    assert all(d.id.startswith("corrections:") for d in loaded.train + loaded.validation)

    assert run("train", "mister-e", "--corpus", "csv", "--data", corpus, "--cache", tmp_path / "cache", *TINY,
               "--corrections", corrected, "--corrections-weight", "2") == 0
    [stored] = [p for p in (data_dir / "models" / "mister-e").iterdir()]
    ckpt = read_checkpoint(stored)
    assert set(ckpt.metrics["val"]) == {"main", "corrections"}, "validation on the corpus and the corrections"
    assert ckpt.metrics["val"]["corrections"]["n"] == 4
    facts = ckpt.data["data"]["corrections"]
    assert facts["turns"] == 16 and facts["dialogues"] == {"train": 3, "validation": 1} and facts["weight"] == 2.0
    card = (stored / "MODEL_CARD.md").read_text()
    assert "**Corrections** from" in card and "16 labelled turns" in card and "`corrections`: weighted F1" in card


def test_the_app_database_trains_with_validation_from_the_corpus(tmp_path, data_dir, models, dialogue):
    service = Service.open(Settings(data_dir=data_dir))
    try:
        doc = service.analyze(*dialogue)
        for turn, label in zip(doc["turns"], ("joy", "anger", "neutral")):
            service.save_correction(turn["turn_id"], label, "ann")
        service.save_correction(doc["turns"][0]["turn_id"], "joy", "bob")
        url = service.settings.resolved_database_url
    finally:
        service.close()
    corpus = write_csv_corpus(tmp_path / "corpus", dialogues={"train": 3, "validation": 1})
    assert run("train", "mister-e", "--corpus", "csv", "--data", corpus, "--cache", tmp_path / "cache", *TINY,
               "--corrections", url) == 0
    [stored] = [p for p in (data_dir / "models" / "mister-e").iterdir() if p.is_dir()]
    ckpt = read_checkpoint(stored)
    facts = ckpt.data["data"]["corrections"]
    assert facts["turns"] == 3 and facts["annotators"] == ["ann", "bob"] and facts["policy"] == POLICY
    assert facts["validation_from"] == "corpus" and facts["first"] <= facts["last"]
    assert set(ckpt.metrics["val"]) == {"main"}
    card = (stored / "MODEL_CARD.md").read_text()
    assert "validation uses the corpus's validation split only" in card and "ann, bob" in card


def test_bad_corrections_sources_say_what_to_give(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_corrections(str(tmp_path / "nothing.zip"), MELD7)
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(InputError, match="not a zip"):
        load_corrections(str(tmp_path / "bad.zip"), MELD7)
    with pytest.raises(InputError, match="must be positive"):
        load_corrections(str(tmp_path / "bad.zip"), MELD7, weight=0)


def test_retrain_compares_the_candidate_with_the_active_version(tmp_path, data_dir):
    import json

    from backend.model_store import open_model_store
    from backend.settings import get_settings

    corpus = write_csv_corpus(tmp_path / "corpus", audio=False, dialogues={"train": 3, "validation": 1})
    corrected = write_csv_corpus(tmp_path / "corrected", audio=False, dialogues={"train": 4})
    common = ["--corpus", "csv", "--data", corpus, "--cache", tmp_path / "cache", *TINY]
    assert run("train", "mister-e", *common) == 0
    store = open_model_store(get_settings())
    [first] = [v for v in store.versions("mister-e") if not v.builtin]
    store.activate("mister-e", first.version)

    report = tmp_path / "report.json"
    assert run("retrain", "mister-e", "--report", report, *common, "--corrections", corrected, "--epochs", "3") == 0
    result = json.loads(report.read_text())
    assert result["active_version"] == first.version and result["version"] != first.version
    assert result["version"] in {v.version for v in store.versions("mister-e")}
    comparison = result["comparison"]
    assert set(comparison) == {"corpus validation", "held-out corrections"}
    assert comparison["corpus validation"]["candidate"]["n"] == comparison["corpus validation"]["active"]["n"] == 4
    assert comparison["held-out corrections"]["active"]["n"] == 4


def test_init_continues_from_a_version_without_retraining_stage_1(tmp_path, data_dir):
    from backend.model_store import open_model_store
    from backend.settings import get_settings

    corpus = write_csv_corpus(tmp_path / "corpus", audio=False, dialogues={"train": 3, "validation": 1})
    corrected = write_csv_corpus(tmp_path / "corrected", audio=False, dialogues={"train": 4})
    common = ["--corpus", "csv", "--data", corpus, "--cache", tmp_path / "cache", *TINY]
    assert run("train", "mister-e", *common) == 0
    store = open_model_store(get_settings())
    [first] = [v for v in store.versions("mister-e") if not v.builtin]
    store.activate("mister-e", first.version)
    assert run("train", "mister-e", *common, "--corrections", corrected, "--init", "active") == 0
    [second] = [v for v in store.versions("mister-e") if not v.builtin and v.version != first.version]
    before, after = store.find("mister-e", first.version), store.find("mister-e", second.version)
    assert after.components["text"]["version"] == before.components["text"]["version"], "stage 1 reused"
    assert "--init active" in after.data["command"] and after.data["data"]["corrections"]["turns"] == 16
    with_audio = write_csv_corpus(tmp_path / "with-audio", dialogues={"train": 3, "validation": 1})
    with pytest.raises(InputError, match="reads text but this run has text, speech"):
        run("train", "mister-e", "--corpus", "csv", "--data", with_audio, "--cache", tmp_path / "cache", *TINY,
            "--init", first.version)
    assert run("train", "mister-e", "--corpus", "csv", "--data", with_audio, "--cache", tmp_path / "cache",
               *TINY, "--out", tmp_path / "both") == 0
    assert run("train", "mister-e", *common, "--init", tmp_path / "both", "--out", tmp_path / "text-only-data") == 0
    continued = read_checkpoint(tmp_path / "text-only-data")
    assert continued.config["modalities"] == ["text", "speech"], "the version's speech expert is kept"
    assert continued.components["speech"]["version"] == read_checkpoint(tmp_path / "both").components["speech"]["version"]
