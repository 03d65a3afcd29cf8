"""The page in real headless Chromium shows both models' results for a generated video.

The screenshot is kept as test-artifacts/browser-analysis.png.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from backend.settings import REPO_ROOT
from tests.app_helpers import FarcerDouble, MisterEDouble, install, write_dialogue
from tests.test_api import RunningApp

ARTIFACTS = REPO_ROOT / "test-artifacts"
EVIL_NOTE = "<img src=x onerror=alert(1)>"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--virtual-time-budget=20000",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("no headless Chromium found (`apt-get install -y chromium`; .ci/run installs it)")


def browse(binary: str, url: str, *args: str) -> str:
    done = subprocess.run([binary, *FLAGS, *args, url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _text(dom: str, element_id: str) -> str:
    """The visible text inside the element with `element_id` (tags dropped)."""
    start = dom.index(f'id="{element_id}"')
    return re.sub(r"<[^>]+>", " ", dom[start : start + 60_000])


def test_page_shows_both_models_for_a_generated_video(tmp_path, monkeypatch):
    binary = chromium()
    install(monkeypatch, MisterEDouble(), FarcerDouble())
    video, subtitles = write_dialogue(tmp_path)
    app = RunningApp(tmp_path / "data")
    try:
        doc = app.service.analyze(video, subtitles=subtitles)
        app.service.save_correction(doc["turns"][0]["turn_id"], "joy", "ann", EVIL_NOTE)
        url = f"{app.url}/?dialogue={doc['dialogue_id']}"
        dom = browse(binary, url, "--dump-dom")
        track = re.search(r'<track kind="captions"[^>]* src="([^"]+)"', dom)
        assert track, "the player has the predictions as a subtitle track"
        captions = urllib.request.urlopen(html.unescape(track[1]), timeout=30).read().decode()
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "browser-analysis.png"
        shot.unlink(missing_ok=True)
        browse(binary, url, "--window-size=1400,2600", f"--screenshot={shot}")
    finally:
        app.close()

    status = _text(dom, "model-status")
    assert "mister-e-double test-1" in status and "farcer-double test-1" in status
    table = " ".join(_text(dom, "results-table").split())
    for turn in doc["turns"]:
        assert turn["text"].replace("&", "&amp;") in table
    row = lambda i: re.escape(doc["turns"][i]["text"])  # noqa: E731
    assert re.search(row(1) + r" joy 0\.505 0\.50/0\.20/0\.30 anger 0\.6 no", table), table[:3000]
    assert re.search(row(2) + r" surprise 0\.505 0\.50/0\.20/0\.30 fear 0\.6 no", table)
    assert captions.startswith("WEBVTT") and "MiSTER-E surprise 50% · FARCER fear 60%" in captions
    teaching = _text(dom, "teaching-view")
    assert "Past labels used" in teaching and "[face image]" in teaching
    assert "onerror=alert(1)" in dom and '<img src="x"' not in dom and "<img src=x" not in dom, (
        "the note is shown as text, not markup"
    )
    assert Path(shot).stat().st_size > 10_000
