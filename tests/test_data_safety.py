"""Data safety and limits through the service and the running app: nothing of the data dir is
served, other processes lose nothing, refused analyses store nothing, decoding is bounded, ids are
checked, saves are idempotent, the analysis queue is bounded, the upload cache is cleaned."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from backend.errors import InputError
from backend.service import Service
from backend.settings import REPO_ROOT, Settings
from backend.synthetic_media import make_dialogue_video, make_silent_video
from tests.app_helpers import SRT, FarcerDouble, MisterEDouble, install
from tests.test_api import RunningApp
from tests.test_media import lying_video

HANG_GUARD_S = 60  # how long to wait for another thread or request before calling the test hung


def stored_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "media").rglob("*") if p.is_file()]


def analyse(app: RunningApp, video: Path, subtitles: Path) -> dict:
    return app.client.predict(handle_file(video), handle_file(subtitles), "offline", api_name="/analyze")


def wait_for(condition) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, "never reached the expected state"
        time.sleep(0.02)


def in_another_process(settings: Settings, code: str) -> str:
    """Run `code` with `store` open on the app's database in a second process (as a CLI would)."""
    script = (
        "import sys\nfrom backend.storage import Store\n"
        f"store = Store({settings.resolved_database_url!r}, {str(settings.media_dir)!r})\n"
        f"{code}\nstore.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


# --- 1: nothing of the data dir is served; a second process loses nothing ---------------------------


def test_the_database_is_never_served_and_saves_survive_other_processes(tmp_path, models, dialogue):
    app = RunningApp(tmp_path / "data")
    try:
        doc = analyse(app, *dialogue)
        data_dir = str(app.settings.data_dir.resolve())
        assert doc["media"]["path"] is None and data_dir not in json.dumps(doc), "no server path in replies"
        database = app.settings.data_dir.resolve() / "erc.sqlite3"
        [video] = stored_files(app.settings.data_dir)
        for path in (database, video.resolve(), database.with_name("erc.sqlite3-wal")):
            assert http_status(f"{app.url}/gradio_api/file={path}") == 403, path
        # A CLI opens and closes the store; had the app dropped its SQLite locks (by opening the
        # database file to serve it), this would delete the live WAL and the save below would be lost.
        in_another_process(app.settings, "store.dialogues()")
        saved = app.client.predict(doc["turns"][0]["turn_id"], "joy", "ann", "", api_name="/save_correction")
        seen = in_another_process(app.settings, "print([a['annotation_id'] for a in store.annotations()])")
        assert json.loads(seen) == [saved["annotation_id"]]
        export = Path(app.client.predict("jsonl", api_name="/export_corrections"))
        assert json.loads(export.read_text())["history"][0]["annotation_id"] == saved["annotation_id"]
    finally:
        app.close()


# --- 2, 4, 5: refused analyses store nothing, decoding is bounded, messages name the upload ----------


def test_an_analysis_refused_for_its_turns_stores_nothing(tmp_path, models, dialogue):
    service = Service.open(Settings(data_dir=tmp_path / "data"))
    try:
        late = tmp_path / "late.srt"
        late.write_text(SRT.replace("00:00:04,000 --> 00:00:05,200", "00:01:04,000 --> 00:01:05,200"))
        with pytest.raises(InputError, match="late.srt, turn 3: starts at 64.00 s, at or after the end"):
            service.analyze(dialogue[0], subtitles=late)
        assert service.dialogues() == [] and stored_files(service.settings.data_dir) == []
        assert service.store.find_analysis("0" * 64, "offline", {}) is None
    finally:
        service.close()


def test_messages_name_the_uploaded_file(tmp_path, models):
    silent = make_silent_video(tmp_path / "holiday talk.mp4", duration_s=1.0, size=(160, 96))
    service = Service.open(Settings(data_dir=tmp_path / "data"))
    try:
        with pytest.raises(InputError) as refused:
            service.analyze(silent)
        assert str(refused.value).startswith("holiday talk.mp4 has no audio track and no subtitles")
        assert stored_files(service.settings.data_dir) == []
    finally:
        service.close()


def test_a_header_that_understates_the_duration_is_refused_by_decoding(tmp_path, models):
    lying = lying_video(tmp_path / "short.mp4", video_s=2.0, audio_s=20.0, claimed_s=2.0)
    subtitles = tmp_path / "short.srt"
    subtitles.write_text("1\n00:00:00,200 --> 00:00:01,500\nAnn: hello\n", encoding="utf-8")
    service = Service.open(Settings(data_dir=tmp_path / "data", max_video_s=5))
    try:
        with pytest.raises(InputError, match="short.mp4 holds more than 5 s of sound, over the 5 s limit"):
            service.analyze(lying, subtitles=subtitles)
        assert service.dialogues() == [] and stored_files(service.settings.data_dir) == []
    finally:
        service.close()


# --- 7: memory of a long dialogue is bounded --------------------------------------------------------


# Analyses a long dialogue in a fresh process (after a short one, so that the models and codecs are
# loaded) and prints how far its resident memory rose above where it stood before.
_PEAK_OF_A_LONG_ANALYSIS = """
import sys
from pathlib import Path
from backend import predictors
from backend.service import Service
from backend.settings import Settings
from tests.app_helpers import FarcerDouble, MisterEDouble, write_dialogue

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

predictors.PREDICTOR_LOADERS = {
    "mister_e": lambda profile, settings: MisterEDouble(),
    "farcer": lambda profile, settings: FarcerDouble(),
}
folder = Path(sys.argv[1])
service = Service.open(Settings(data_dir=folder / "data"))
service.analyze(*write_dialogue(folder))
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # restart the peak (VmHWM) from the current size
service.analyze(folder / "long.mp4", subtitles=folder / "long.srt")
print((status("VmHWM") - before) // 1024)
"""


def test_a_long_dialogue_does_not_hold_every_turns_frames(tmp_path):
    size, n_turns = (1280, 720), 40
    turns = [(i + 0.1, i + 0.9) for i in range(n_turns)]
    make_dialogue_video(tmp_path / "long.mp4", turns, size=size, fps=5, duration_s=float(n_turns))
    (tmp_path / "long.srt").write_text(
        "\n".join(f"{i + 1}\n00:00:{i:02d},100 --> 00:00:{i:02d},900\nAnn: {i}\n" for i in range(n_turns)),
        encoding="utf-8",
    )
    every_frame_mb = 3 * n_turns * size[0] * size[1] * 3 / 2**20  # three frames per turn: 316 MiB
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_A_LONG_ANALYSIS, str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rise_mb = int(done.stdout.split()[-1])
    assert rise_mb < every_frame_mb / 2, f"resident memory rose {rise_mb} MiB during the analysis"


# --- 3, 5, 8: ids, upload size and idempotent saves through the API ----------------------------------


def test_ids_uploads_and_retried_saves_through_the_api(tmp_path, models, dialogue):
    assert dialogue[0].stat().st_size < 900_000
    app = RunningApp(tmp_path / "data", max_upload_mb=0.9)
    try:
        doc = analyse(app, *dialogue)
        turn_id = doc["turns"][0]["turn_id"]
        bad_ids = [
            (turn_id + 0.5, "turn id must be a whole number, got"),
            ("abc", "turn id must be a whole number, got 'abc'"),
            (2**40, "turn id 1099511627776 is out of range"),
            (-3, "turn id -3 is out of range"),
        ]
        for bad, message in bad_ids:
            with pytest.raises(AppError, match=message):
                app.client.predict(bad, "joy", "ann", "", api_name="/save_correction")
        assert all(app.service.history(t["turn_id"]) == [] for t in doc["turns"]), "nothing was saved"

        first = app.client.predict(turn_id, "joy", "ann", "n", "client-42", api_name="/save_correction")
        retry = app.client.predict(turn_id, "joy", "ann", "n", "client-42", api_name="/save_correction")
        assert retry == first and len(app.service.history(turn_id)) == 1
        with pytest.raises(AppError, match="request id 'client-42' was already used for another save"):
            app.client.predict(turn_id, "anger", "ann", "n", "client-42", api_name="/save_correction")
        app.client.predict(turn_id, "anger", "ann", "", api_name="/save_correction")  # no request id
        assert [r["label"] for r in app.service.history(turn_id)] == ["joy", "anger"]
    finally:
        app.close()


# --- 4: Gradio's upload cache does not outlive the app ----------------------------------------------


def test_uploads_are_removed_from_the_cache(tmp_path, models, dialogue):
    app = RunningApp(tmp_path / "data")
    try:
        analyse(app, *dialogue)
        uploads = [Path(p) for p in app.demo.upload_file_set]
        assert len(uploads) == 2 and all(p.exists() for p in uploads)
    finally:
        app.close()
    assert not any(p.exists() for p in uploads)


# --- 7: the analysis queue is bounded and tells the waiting their position --------------------------


@dataclass
class HeldMisterE(MisterEDouble):
    """MiSTER-E's double, holding each analysis until the test releases it."""

    running: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def predict(self, *args, **kwargs):
        self.running.set()
        assert self.release.wait(HANG_GUARD_S), "the test never released the analysis"
        return super().predict(*args, **kwargs)


def test_the_analysis_queue_is_bounded_and_shows_the_position(tmp_path, monkeypatch, dialogue):
    held, _ = install(monkeypatch, HeldMisterE(), FarcerDouble())
    video, subtitles = dialogue
    variants = []
    for i in range(3):
        variant = tmp_path / f"talk-{i}.srt"
        variant.write_text(SRT.replace("Oh, hello!", f"Oh, hello {i}!"), encoding="utf-8")
        variants.append(variant)
    app = RunningApp(tmp_path / "data", max_queued_analyses=1)
    try:
        running = app.client.submit(handle_file(video), handle_file(variants[0]), "", api_name="/analyze")
        assert held.running.wait(HANG_GUARD_S)
        waiting = app.client.submit(handle_file(video), handle_file(variants[1]), "", api_name="/analyze")
        wait_for(lambda: app.service.queue.state() == (True, 1))

        def shown() -> str:
            progress = waiting.status().progress_data or []
            return " ".join(p.desc or "" for p in progress)

        wait_for(lambda: "number 1 of 1 in the queue" in shown())
        full = "The analysis queue is full: one analysis is running and 1 is waiting"
        with pytest.raises(AppError, match=full):
            app.client.predict(handle_file(video), handle_file(variants[2]), "", api_name="/analyze")
        held.release.set()
        first, second = running.result(timeout=HANG_GUARD_S), waiting.result(timeout=HANG_GUARD_S)
        assert not first["reused"] and not second["reused"] and first["dialogue_id"] != second["dialogue_id"]
        assert len(app.service.dialogues()) == 2, "the refused analysis stored nothing"
    finally:
        held.release.set()
        app.close()
