"""The whole learning loop through the public API, on generated videos and a tiny MiSTER-E: analyse, two
annotators correct, retrain (a background job), the new version appears, activate, analyse again: the
human labels are still there and, on held-out turns of the same kind, the new version leans toward the
corrections."""

from __future__ import annotations

import time
import zipfile

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from backend import predictors
from backend.synthetic_media import make_dialogue_video
from tests.app_helpers import FarcerDouble
from tests.test_api import RunningApp
from tests.test_mister_e_training import TINY, run, write_csv_corpus

JOB_WAIT_S = 900  # a hang guard, not a speed target
TURNS = [(0.3, 1.5), (2.0, 3.4), (4.0, 5.2)]
# A domain the corpus never shows (it has neutral, joy and anger only): office bad news, corrected as sadness.
TAUGHT = ["the report is late again", "they moved the meeting to friday", "my project was cancelled today"]
HELD_OUT = ["the meeting is late again today", "my report was moved to friday", "they cancelled the project again"]


def _video(folder, name: str, lines: list[str], duration_s: float):
    video = make_dialogue_video(folder / f"{name}.mp4", TURNS, size=(320, 180), duration_s=duration_s)
    srt = "".join(
        f"{i + 1}\n00:00:0{int(a)},{int(a % 1 * 1000):03d} --> 00:00:0{int(b)},{int(b % 1 * 1000):03d}\n"
        f"{'AB'[i % 2]}: {line}\n\n"
        for i, ((a, b), line) in enumerate(zip(TURNS, lines))
    )
    subtitles = folder / f"{name}.srt"
    subtitles.write_text(srt, encoding="utf-8")
    return video, subtitles


def _sadness(doc: dict) -> float:
    return float(np.mean([t["mister_e"]["probs"]["sadness"] for t in doc["turns"]]))


def test_the_learning_loop_through_the_api(tmp_path, data_dir, monkeypatch):
    # MiSTER-E for real (tiny, trained here on a generated corpus); FARCER stays a double.
    monkeypatch.setattr(predictors, "PREDICTOR_LOADERS", {"farcer": lambda profile, settings: FarcerDouble()})
    monkeypatch.setattr(predictors, "_CACHE", {})
    corpus = write_csv_corpus(tmp_path / "corpus", dialogues={"train": 6, "validation": 2})
    tiny = [*TINY, "--cache", str(tmp_path / "cache")]
    assert run("train", "mister-e", "--corpus", "csv", "--data", corpus, *tiny) == 0
    taught = _video(tmp_path, "taught", TAUGHT, 6.0)
    held_out = _video(tmp_path, "held-out", HELD_OUT, 6.5)  # another video: other media, other turns

    app = RunningApp(data_dir, retrain_corpus="csv", retrain_data=corpus,
                     retrain_args={"mister-e": " ".join([*tiny, "--epochs", "10", "--lr", "3e-3", "--init", "active"])})
    try:
        api = app.client
        named = set(api.view_api(print_info=False, return_format="dict")["named_endpoints"])
        assert {"/model_versions", "/retrain", "/job_status", "/cancel_job", "/activate_model"} <= named
        [first] = [v for v in api.predict(api_name="/model_versions") if v["model"] == "mister-e" and not v["builtin"]]
        assert api.predict("mister-e", first["version"], api_name="/activate_model") == {
            "model": "mister-e", "version": first["version"]}

        doc = api.predict(handle_file(taught[0]), handle_file(taught[1]), "offline", api_name="/analyze")
        before = api.predict(handle_file(held_out[0]), handle_file(held_out[1]), "offline", api_name="/analyze")
        assert doc["models"]["mister_e"]["version"] == first["version"]
        for turn in doc["turns"]:
            if turn["index"] == 0:
                api.predict(turn["turn_id"], "neutral", "bob", "", api_name="/save_correction")
            api.predict(turn["turn_id"], "sadness", "ann", "", api_name="/save_correction")
            api.predict(turn["turn_id"], "sad", "bob", "on second thought", api_name="/save_correction")
        with zipfile.ZipFile(api.predict("corpus", api_name="/export_corrections")) as archive:
            assert sum(n.startswith("audio/") for n in archive.namelist()) == 3

        job = api.predict("mister-e", {"corrections_weight": 20}, api_name="/retrain")
        with pytest.raises(AppError, match="a retraining job is running"):
            api.predict("mister-e", None, api_name="/retrain")
        deadline, status = time.monotonic() + JOB_WAIT_S, None
        while time.monotonic() < deadline:
            status = api.predict(job["job_id"], api_name="/job_status")
            if status["state"] != "running":
                break
            time.sleep(1)
        assert status["state"] == "succeeded", status["message"]
        version = status["version"]
        assert status["metrics"]["comparison"]["corpus validation"]["active"]["n"] == 8

        [new] = [v for v in api.predict(api_name="/model_versions") if v["version"] == version]
        assert new["model"] == "mister-e" and not new["active"] and new["data"]["corrections"]["turns"] == 3
        assert new["data"]["corrections"]["annotators"] == ["ann", "bob"] and "weighted_f1" in str(new["metrics"])
        api.predict("mister-e", version, api_name="/activate_model")

        again = api.predict(handle_file(taught[0]), handle_file(taught[1]), "offline", api_name="/analyze")
        assert not again["reused"] and again["models"]["mister_e"]["version"] == version
        labels = app.service.human_labels(again["dialogue_id"])
        assert labels == {t["turn_id"]: "sadness" for t in again["turns"]}, "the human labels follow the video"

        after = api.predict(handle_file(held_out[0]), handle_file(held_out[1]), "offline", api_name="/analyze")
        assert after["models"]["mister_e"]["version"] == version
        assert _sadness(after) > _sadness(before) + 0.05, (
            f"held-out turns lean toward the corrections: P(sadness) {_sadness(before):.3f} -> {_sadness(after):.3f}"
        )
    finally:
        app.close()
