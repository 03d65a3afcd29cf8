"""The app's use cases: analyse-and-store, reopen without recomputing, limits, corrections, exports."""

from __future__ import annotations

import json

import pytest

from backend.errors import InputError
from backend.schema import validate_analysis
from backend.service import Service, resolve_annotator
from backend.settings import Settings
from backend.storage.media import media_relpath
from tests.app_helpers import MisterEDouble, install
from tests.concurrency import run_at_once
from tests.pg import postgres_url  # noqa: F401 (a fixture used by name)


@pytest.fixture
def service(tmp_path):
    service = Service.open(Settings(data_dir=tmp_path / "data"))
    yield service
    service.close()


def test_analysis_is_stored_and_reopened_without_recomputing(service, models, dialogue, monkeypatch):
    mister_e, farcer = models
    video, subtitles = dialogue
    doc = service.analyze(video, subtitles=subtitles)

    validate_analysis(doc)
    assert not doc["reused"] and (mister_e.calls, farcer.calls) == (1, 1)
    assert [t["speaker"] for t in doc["turns"]] == ["Rachel", "Ross", "Rachel"]
    prompt = doc["turns"][0]["farcer"]["prompt"]
    assert [s["kind"] for s in prompt].count("image") == 1, "the app keeps FARCER's prompt"
    sha = doc["media"]["sha256"]
    stored = service.settings.media_dir / media_relpath(sha, ".mp4")
    assert stored.read_bytes() == video.read_bytes() and doc["media"]["path"] == str(stored)

    again = service.analyze(video, subtitles=subtitles)
    assert again["reused"] and (mister_e.calls, farcer.calls) == (1, 1)
    assert again["dialogue_id"] == doc["dialogue_id"]
    assert [t["turn_id"] for t in again["turns"]] == [t["turn_id"] for t in doc["turns"]]
    assert service.reopen(doc["dialogue_id"])["turns"][1]["mister_e"] == doc["turns"][1]["mister_e"]

    install(monkeypatch, MisterEDouble(version="test-2"), farcer)
    newer = service.analyze(video, subtitles=subtitles)
    assert not newer["reused"] and newer["dialogue_id"] != doc["dialogue_id"], (
        "a new model version recomputes"
    )


def test_another_turn_source_is_analysed_again(service, models, dialogue):
    video, subtitles = dialogue
    first = service.analyze(video, subtitles=subtitles)
    table = [["A", 0.3, 1.5, "one"], ["B", 2.0, 3.4, "two"]]
    edited = service.analyze(first["media"]["path"], table=table)
    assert not edited["reused"] and [t["text"] for t in edited["turns"]] == ["one", "two"]
    assert edited["turn_source"]["kind"] == "table"
    assert service.analyze(first["media"]["path"], table=table)["reused"]


def test_models_missing_are_reported_not_fatal(service, monkeypatch, dialogue):
    install(monkeypatch, MisterEDouble(), None)
    doc = service.analyze(dialogue[0], subtitles=dialogue[1])
    assert "farcer" not in doc["turns"][0] and "mister_e" in doc["turns"][0]
    assert any("FARCER" in w for w in doc["warnings"])


def test_upload_limits_are_clear_and_store_nothing(tmp_path, models, dialogue):
    video, subtitles = dialogue
    small = Service.open(Settings(data_dir=tmp_path / "a", max_upload_mb=0.001))
    short = Service.open(Settings(data_dir=tmp_path / "b", max_video_s=2.0))
    try:
        with pytest.raises(InputError, match="over the .* upload limit"):
            small.analyze(video, subtitles=subtitles)
        with pytest.raises(InputError, match="lasts .* over the 2 s limit"):
            short.analyze(video, subtitles=subtitles)
        with pytest.raises(InputError, match="upload a video"):
            short.analyze(None)
        assert small.dialogues() == [] and short.dialogues() == []
        assert not any(p.is_file() for p in (tmp_path / "a" / "media").rglob("*"))
    finally:
        small.close()
        short.close()


def test_corrections_and_exports(service, models, dialogue):
    doc = service.analyze(*dialogue)
    t0, t1, _ = (t["turn_id"] for t in doc["turns"])
    saved = service.save_correction(t0, "happy", "ann", " laughs ")
    assert {k: saved[k] for k in ("turn_id", "label", "annotator", "note")} == {
        "turn_id": t0,
        "label": "joy",
        "annotator": "ann",
        "note": "laughs",
    }
    service.save_correction(t0, "surprise", "bob")
    service.save_correction(t1, "anger", "ann")
    with pytest.raises(InputError, match="unknown emotion label 'bored'"):
        service.save_correction(t1, "bored", "ann")
    with pytest.raises(InputError, match="turn 9999 does not exist"):
        service.save_correction(9999, "joy", "ann")
    assert [r["label"] for r in service.history(t0)] == ["joy", "surprise"]

    csv_text = service.export("meld_csv").read_text(encoding="utf-8").splitlines()
    assert csv_text[0].startswith("Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID")
    assert len(csv_text) == 3 and ",surprise,," in csv_text[1] and ",anger,negative," in csv_text[2]
    only_ann = service.export("meld_csv", annotator="ann").read_text().splitlines()
    assert ",joy,positive," in only_ann[1], "a filtered export keeps that annotator's label"
    records = [json.loads(line) for line in service.export("jsonl").read_text().splitlines()]
    assert [len(r["history"]) for r in records] == [2, 1]
    with pytest.raises(InputError, match="unknown export format 'xml'"):
        service.export("xml")


def test_agreement_through_the_service(service, models, dialogue):
    doc = service.analyze(*dialogue)
    for turn, label in zip(doc["turns"], ["joy", "neutral", "fear"]):
        service.save_correction(turn["turn_id"], label, "ann")
        service.save_correction(turn["turn_id"], label, "bob")
    report = service.agreement(dialogue_id=doc["dialogue_id"])
    assert [(p["a"], p["b"], p["n"], p["kappa"]) for p in report["pairs"]] == [("ann", "bob", 3, 1.0)]
    assert {m["a"] for m in report["models"]} == {"MiSTER-E", "FARCER"}


def test_labels_follow_the_video_into_a_new_analysis(service, models, dialogue, monkeypatch):
    first = service.analyze(*dialogue)
    old = [t["turn_id"] for t in first["turns"]]
    service.save_correction(old[0], "anger", "ann")
    service.save_correction(old[1], "joy", "ann")
    install(monkeypatch, MisterEDouble(version="test-2"), models[1])
    again = service.analyze(*dialogue)
    new = [t["turn_id"] for t in again["turns"]]
    assert not set(new) & set(old), "another model version: a new analysis with its own turns"

    assert service.human_labels(again["dialogue_id"]) == {new[0]: "anger", new[1]: "joy"}
    listed = {d["dialogue_id"]: d["annotated_turns"] for d in service.dialogues()}
    assert listed == {first["dialogue_id"]: 2, again["dialogue_id"]: 2}
    assert [(r["label"], r["turn_id"]) for r in service.history(new[0])] == [("anger", new[0])]
    service.save_correction(new[0], "sadness", "bob")  # saved on the new analysis: the old one sees it
    assert service.human_labels(first["dialogue_id"])[old[0]] == "sadness", "a tie goes to the most recent"

    rows = service.annotations(dialogue_id=again["dialogue_id"])
    assert {r["turn_id"] for r in rows} == {new[0], new[1]} and len(rows) == 3
    predictions = rows[0]["predictions"]
    assert predictions["MiSTER-E"]["version"] == "test-2" and predictions["MiSTER-E @test-1"]["version"] == "test-1"
    assert "FARCER" in predictions and not any(k.startswith("FARCER @") for k in predictions), (
        "the same FARCER version is one model"
    )
    report = service.agreement(dialogue_id=again["dialogue_id"])
    assert {m["a"] for m in report["models"]} == {"MiSTER-E", "MiSTER-E @test-1", "FARCER"}
    assert report["turns"] == 2, "each turn once, whichever analysis it was labelled on"
    everything = service.annotations()
    assert len({r["turn_id"] for r in everything}) == 2 and {r["dialogue_id"] for r in everything} == {
        first["dialogue_id"]
    }, "without a dialogue filter a turn is shown as its first analysis has it"

    edited = service.analyze(first["media"]["path"], table=[["A", 0.3, 1.5, "other words"]])
    assert service.human_labels(edited["dialogue_id"]) == {}, "another text is another turn"


def test_login_rules():
    assert resolve_annotator("typed", "hf-user", require_login=True) == "hf-user"
    assert resolve_annotator(" typed ", None, require_login=False) == "typed"
    with pytest.raises(InputError, match="Hugging Face login"):
        resolve_annotator("typed", None, require_login=True)
    with pytest.raises(InputError, match="annotator name is empty"):
        resolve_annotator("  ", None, require_login=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_settings(request, tmp_path) -> Settings:
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    return Settings(data_dir=tmp_path / "data", database_url=url)


def test_many_annotators_at_once_lose_nothing(any_settings, models, dialogue):
    threads, per_thread = 6, 15
    service = Service.open(any_settings)
    try:
        doc = service.analyze(*dialogue)
        turn_ids = [t["turn_id"] for t in doc["turns"]]

        def annotate(worker: int, i: int) -> None:
            service.save_correction(turn_ids[i % len(turn_ids)], "joy", f"annotator-{worker}", str(i))

        run_at_once(annotate, threads, per_thread)
        rows = service.annotations(dialogue_id=doc["dialogue_id"])
        assert len({r["annotation_id"] for r in rows}) == threads * per_thread
        assert (
            sum(len(json.loads(line)["history"]) for line in service.export("jsonl").read_text().splitlines())
            == threads * per_thread
        )
    finally:
        service.close()
