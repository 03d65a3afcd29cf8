"""`python -m backend.batch_analysis`: a folder of videos analysed into the app's database, resumable,
bad videos reported and skipped, split between accelerate processes sharing a PostgreSQL database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from backend import batch_analysis
from backend.batch_analysis import SUBTITLE_SUFFIXES, analyse_folder, find_videos, subtitles_beside
from backend.errors import InputError
from backend.service import Service
from backend.settings import Settings
from backend.synthetic_media import make_silent_video
from tests.app_helpers import MisterEDouble, install
from tests.pg import postgres_url  # noqa: F401 (a fixture used by name)

ROOT = Path(__file__).resolve().parent.parent
MUTE_VTT = "WEBVTT\n\n00:00.200 --> 00:01.400\nAnna: Nothing to say.\n"


@pytest.fixture(scope="module")
def collection(tmp_path_factory, dialogue) -> Path:
    """talk.mp4 + talk.srt (two speakers), mute.mp4 + mute.vtt (no audio track: the text decides),
    silent.mp4 (no audio, no subtitles: nothing to analyse), corrupt.mp4 (not a video), notes.txt."""
    folder = tmp_path_factory.mktemp("collection")
    video, subtitles = dialogue
    shutil.copy(video, folder / "talk.mp4")
    shutil.copy(subtitles, folder / "talk.srt")
    make_silent_video(folder / "mute.mp4", duration_s=2.0, size=(160, 96))
    (folder / "mute.vtt").write_text(MUTE_VTT, encoding="utf-8")
    make_silent_video(folder / "silent.mp4", duration_s=1.0, size=(160, 96))
    (folder / "corrupt.mp4").write_bytes(b"this is not a video\n" * 50)
    (folder / "notes.txt").write_text("not a video either")
    return folder


def _status(summary) -> dict[str, str]:
    return {Path(o.video).name: o.status for o in summary.outcomes}


def test_videos_and_their_subtitles_are_found(collection):
    assert [p.name for p in find_videos(collection)] == ["corrupt.mp4", "mute.mp4", "silent.mp4", "talk.mp4"]
    assert subtitles_beside(collection / "talk.mp4").name == "talk.srt"
    assert subtitles_beside(collection / "mute.mp4").name == "mute.vtt"
    assert subtitles_beside(collection / "silent.mp4") is None
    assert subtitles_beside(collection / "talk.mp4", (".vtt",)) is None
    assert ".csv" in SUBTITLE_SUFFIXES, "transcript CSVs are turn files too"


def test_a_folder_is_stored_resumed_and_redone_for_a_new_model_version(
    collection, tmp_path, models, monkeypatch
):
    mister_e, farcer = models
    settings = Settings(data_dir=tmp_path / "data")
    lines: list[str] = []
    first = analyse_folder(collection, settings=settings, report=lines.append)

    assert _status(first) == {
        "corrupt.mp4": "failed", "mute.mp4": "analysed", "silent.mp4": "failed", "talk.mp4": "analysed"
    }
    reasons = {Path(o.video).name: o.reason for o in first.of("failed")}
    assert "corrupt.mp4 is not a readable media file" in reasons["corrupt.mp4"]
    assert "silent.mp4 has no audio track and no subtitles" in reasons["silent.mp4"]
    assert len(lines) == 1 + 4 and "4 videos" in lines[0], "a line for the batch, then one per video"
    assert any("talk.mp4: analysed" in line for line in lines)
    assert first.to_json()["analysed"] == 2 and first.to_json()["failed"] == 2
    assert (mister_e.calls, farcer.calls) == (2, 2)

    service = Service.open(settings)
    try:
        stored = service.dialogues()
        assert len(stored) == 2, "only the good videos are stored"
        media = [p for p in settings.media_dir.rglob("*") if p.is_file()]
        assert sorted(p.suffix for p in media) == [".mp4", ".mp4"], "nothing of the bad videos was kept"
        talk = next(o for o in first.outcomes if o.video.endswith("talk.mp4"))
        doc = service.reopen(talk.dialogue_id)
        assert [t["speaker"] for t in doc["turns"]] == ["Rachel", "Ross", "Rachel"]
        assert doc["turn_source"]["kind"] == "subtitles" and "mister_e" in doc["turns"][0]
        mute = service.reopen(next(o for o in first.outcomes if o.video.endswith("mute.mp4")).dialogue_id)
        assert [(t["speaker"], t["text"]) for t in mute["turns"]] == [("Anna", "Nothing to say.")]
        # The Corrections tab works on a batch-stored analysis as on one made in the app.
        service.save_correction(doc["turns"][1]["turn_id"], "joy", "ann")
        assert [(r["dialogue_id"], r["label"]) for r in service.annotations()] == [(talk.dialogue_id, "joy")]
    finally:
        service.close()

    again = analyse_folder(collection, settings=settings, report=lines.append)
    assert _status(again) == {**_status(first), "mute.mp4": "skipped", "talk.mp4": "skipped"}
    assert (mister_e.calls, farcer.calls) == (2, 2), "nothing already stored ran again"
    assert {o.dialogue_id for o in again.of("skipped")} == {o.dialogue_id for o in first.of("analysed")}

    install(monkeypatch, MisterEDouble(version="test-2"), farcer)
    newer = analyse_folder(collection, settings=settings, report=lines.append)
    assert _status(newer) == _status(first), "a new active model version analyses everything again"
    assert not {o.dialogue_id for o in newer.of("analysed")} & {o.dialogue_id for o in first.of("analysed")}


def test_several_processes_refuse_a_sqlite_database(collection, tmp_path, monkeypatch):
    monkeypatch.setattr(batch_analysis, "process_state", lambda: SimpleNamespace(num_processes=2))
    with pytest.raises(InputError, match="2 processes cannot share a SQLite database; give a PostgreSQL URL"):
        analyse_folder(collection, settings=Settings(data_dir=tmp_path / "data"))
    assert not (tmp_path / "data").exists(), "refused before anything was written"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_command_runs_the_real_models(collection, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("talk.mp4", "talk.srt", "corrupt.mp4"):
        shutil.copy(collection / name, folder / name)
    summary = tmp_path / "summary.json"
    env = {"ERC_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "backend.batch_analysis", str(folder), "--summary-json", str(summary)]
    out = _run(command, env)
    assert out.returncode == 0, out.stderr[-3000:]  # the batch ran to the end; its failures are listed
    assert "1 analysed, 0 skipped (already analysed with the same model versions), 1 failed" in out.stdout
    report = json.loads(summary.read_text())
    assert (report["analysed"], report["skipped"], report["failed"]) == (1, 0, 1)
    talk = next(v for v in report["videos"] if v["video"].endswith("talk.mp4"))
    assert talk["subtitles"].endswith("talk.srt") and talk["dialogue_id"] == 1
    service = Service.open(Settings(data_dir=tmp_path / "data"))
    try:
        doc = service.reopen(talk["dialogue_id"])
        assert set(doc["models"]) == {"mister_e", "farcer"}, "both real models labelled the dialogue"
        assert all(t["mister_e"]["label"] in doc["labels"] for t in doc["turns"])
    finally:
        service.close()


# Two processes with the test doubles registered, as `accelerate launch` starts them.
WORKER = """
import sys
from backend import predictors
from backend import batch_analysis
from backend.batch_analysis import main
from tests.app_helpers import FarcerDouble, MisterEDouble

predictors.PREDICTOR_LOADERS.update(mister_e=lambda p, s: MisterEDouble(), farcer=lambda p, s: FarcerDouble())
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_processes_share_the_work_and_one_postgresql_database(collection, tmp_path, postgres_url):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER, encoding="utf-8")
    summary = tmp_path / "summary.json"
    # --multi_gpu starts the processes with torch's launcher; without CUDA they join with gloo on the CPU
    # (accelerate's --cpu alone starts one process).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "0"]
    env = {"ERC_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    args = [str(collection), "--database", postgres_url, "--summary-json", str(summary)]
    out = _run([*launch, str(worker), *args], env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(summary.read_text())
    assert (report["analysed"], report["skipped"], report["failed"]) == (2, 0, 2)
    worked = {line.split("]")[0] for line in out.stdout.splitlines() if line.startswith("[process")}
    assert worked == {"[process 0", "[process 1"}, f"both processes analysed videos:\n{out.stdout}"

    service = Service.open(Settings(data_dir=tmp_path / "data", database_url=postgres_url))
    try:
        assert sorted(d["dialogue_id"] for d in service.dialogues()) == sorted(
            v["dialogue_id"] for v in report["videos"] if v["status"] == "analysed"
        )
    finally:
        service.close()
