"""The public API through gradio_client against running apps; `python app.py` starts offline and sends
nothing out (how fast it starts is measured by benchmarks/app_latency.py, not asserted here)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gradio
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from backend.service import Service
from backend.settings import REPO_ROOT, Settings
from tests.app_helpers import FarcerDouble, MisterEDouble, install, write_dialogue
from ui.layout import build_app, launch_options

# How long to wait for the page before calling the start hung (a hang guard, not a speed target).
START_WAIT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningApp:
    """The app over a data dir, served on a free port in this process (so test doubles apply)."""

    def __init__(self, data_dir: Path, **settings) -> None:
        self.settings = Settings(data_dir=data_dir, **settings)
        self.service = Service.open(self.settings)
        self.demo = build_app(self.service)
        port = free_port()
        self.demo.launch(
            server_name="127.0.0.1",
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            **launch_options(self.settings),
        )
        self.url = f"http://127.0.0.1:{port}"
        self.client = Client(self.url, verbose=False, download_files=str(data_dir.parent / "downloads"))

    def close(self) -> None:
        self.demo.close()
        self.service.close()


def test_analyse_correct_export_restart(tmp_path, monkeypatch):
    install(monkeypatch, MisterEDouble(), FarcerDouble())
    video, subtitles = write_dialogue(tmp_path)
    app = RunningApp(tmp_path / "data")
    try:
        api = app.client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert {"/analyze", "/save_correction", "/export_corrections"} <= set(api)
        doc = app.client.predict(handle_file(video), handle_file(subtitles), "offline", api_name="/analyze")
        assert doc["schema"] == "erc.analysis/1" and isinstance(doc["dialogue_id"], int)
        assert all(isinstance(t["turn_id"], int) for t in doc["turns"]) and len(doc["turns"]) == 3
        assert doc["turns"][0]["mister_e"]["gate"] and doc["turns"][0]["farcer"]["label"]
        turn_id = doc["turns"][1]["turn_id"]

        saved = app.client.predict(turn_id, "angry", "ann", "raised voice", api_name="/save_correction")
        assert set(saved) == {"annotation_id", "turn_id", "label", "annotator", "note", "created_at", "adjudicated"}
        assert saved["adjudicated"] is False
        assert (saved["turn_id"], saved["label"], saved["annotator"], saved["note"]) == (
            turn_id,
            "anger",
            "ann",
            "raised voice",
        )
        with pytest.raises(AppError, match="unknown emotion label 'bored'"):
            app.client.predict(turn_id, "bored", "ann", "", api_name="/save_correction")
        with pytest.raises(AppError, match="unknown emotion label '<i>&'"):  # not HTML-escaped
            app.client.predict(turn_id, "<i>&", "ann", "", api_name="/save_correction")
        with pytest.raises(AppError, match="turn 987654 does not exist"):
            app.client.predict(987654, "joy", "ann", "", api_name="/save_correction")
        with pytest.raises(AppError, match="unknown export format"):
            app.client.predict("xlsx", api_name="/export_corrections")
        assert len(app.service.history(turn_id)) == 1, "failed saves wrote nothing"
    finally:
        app.close()

    app = RunningApp(tmp_path / "data")
    try:
        with open(app.client.predict("meld_csv", api_name="/export_corrections"), encoding="utf-8") as f:
            [row] = list(csv.DictReader(f))
        assert (row["Utterance"], row["Speaker"], row["Emotion"], row["Sentiment"]) == (
            "Oh, hello!",
            "Ross",
            "anger",
            "negative",
        )
        assert (row["Dialogue_ID"], row["Utterance_ID"], row["StartTime"]) == (
            str(doc["dialogue_id"]),
            "1",
            "00:00:02,000",
        )
        lines = Path(app.client.predict("jsonl", api_name="/export_corrections")).read_text().splitlines()
        assert json.loads(lines[0])["history"][0]["note"] == "raised voice"
        again = app.client.predict(handle_file(video), handle_file(subtitles), "offline", api_name="/analyze")
        assert again["reused"] and [t["turn_id"] for t in again["turns"]] == [
            t["turn_id"] for t in doc["turns"]
        ]
    finally:
        app.close()


# Runs app.py with an audit hook that reports every connection or lookup of a non-local address.
_LAUNCHER = """
import runpy, sys
LOCAL = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
def hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo"):
        address = args[1] if event == "socket.connect" else args
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in LOCAL and not host.startswith("/"):
            print(f"OUTBOUND {event} {host}", file=sys.stderr, flush=True)
sys.addaudithook(hook)
sys.argv = ["app.py"]
runpy.run_path("app.py", run_name="__main__")
"""


def test_app_py_starts_offline_and_sends_nothing_out(tmp_path):
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "ERC_DATA_DIR": str(tmp_path / "data")}
    env.pop("GRADIO_SERVER_NAME", None)
    env.pop("GRADIO_ANALYTICS_ENABLED", None)  # app.py must turn analytics off by itself
    log = tmp_path / "app.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        page = None
        while page is None and time.perf_counter() - start < START_WAIT_S and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(0.2)
        assert page is not None, log.read_text()[-3000:]
        assert "ERC Studio" in page
        time.sleep(1.0)  # anything sent right after start would show up by now
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "OUTBOUND" not in log.read_text(), log.read_text()[-3000:]


def test_spaces_mode_starts_or_says_what_to_install(tmp_path):
    """Spaces mode (tried locally with ERC_SPACES_PREVIEW=1) serves the page with the Hugging Face login,
    or, without gradio's OAuth extra or a local Hugging Face token, exits at once saying what to do."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "ERC_DATA_DIR": str(tmp_path / "data")}
    env["ERC_SPACES_PREVIEW"] = "1"
    env.pop("SPACE_ID", None)
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        config = None
        start = time.perf_counter()
        while config is None and time.perf_counter() - start < START_WAIT_S and proc.poll() is None:
            try:
                config = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5))
            except OSError:
                time.sleep(0.2)
        if config is None:
            output = proc.communicate(timeout=60)[0]
            assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
            assert (
                f"install gradio[oauth] (requirements.txt: gradio[oauth]=={gradio.__version__})" in output
                or "huggingface-cli login" in output  # the preview signs in with a local token
            )
        else:
            assert any(c["type"] == "loginbutton" for c in config["components"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
