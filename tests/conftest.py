"""Shared test setup: offline, no analytics, and real-data fixtures that skip when absent."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
import torch

# The suite's models are tiny: one thread is faster than two fighting over a 2-core CI machine.
torch.set_num_threads(1)

SHARED_DATA = Path(os.environ.get("ERC_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not present at {path} (needs ../shared beside the checkout)")
    return path


@pytest.fixture
def meld_dir() -> Path:
    return _shared("meld")


@pytest.fixture
def ravdess_dir() -> Path:
    return _shared("ravdess")


@pytest.fixture
def fer_dir() -> Path:
    return _shared("fer2013")


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A fresh ERC data dir for settings-dependent code."""
    from backend.settings import get_settings

    monkeypatch.setenv("ERC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("ERC_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def dialogue(tmp_path_factory):
    """A 6 s, 3-turn, two-speaker generated video and its SRT (tests/app_helpers.py)."""
    from tests.app_helpers import write_dialogue

    return write_dialogue(tmp_path_factory.mktemp("dialogue"))


@pytest.fixture
def models(monkeypatch):
    """Both models replaced by instant deterministic doubles (tests/app_helpers.py)."""
    from tests.app_helpers import FarcerDouble, MisterEDouble, install

    return install(monkeypatch, MisterEDouble(), FarcerDouble())


# Plainly written lines for the ASR tests (the turn-pause threshold was tuned on other lines, in
# benchmarks/asr_turns.py). Lines 3 and 4 are one speaker, split by a long pause only.
SPOKEN_LINES = (
    (0, "Good morning. Did you sleep well last night?"),
    (1, "Not really, the neighbours were very loud."),
    (0, "I am sorry to hear that."),
    (1, "It is fine. I will have a nap this afternoon."),
    (1, "But first I need a cup of coffee."),
    (0, "There is some fresh coffee in the kitchen."),
    (1, "Thank you, that is very kind of you."),
)
SPOKEN_PAUSES_S = (0.7, 0.25, 0.9, 1.0, 0.3, 0.8)  # two quick speaker changes (0.25 s, 0.3 s)


@pytest.fixture(scope="session")
def spoken_dialogue(tmp_path_factory):
    """(video path, ground truth) of a 7-line, two-voice eSpeak NG dialogue, generated once."""
    from backend.synthetic_media import make_spoken_dialogue_video

    video = tmp_path_factory.mktemp("spoken") / "spoken.mp4"
    truth = make_spoken_dialogue_video(video, SPOKEN_LINES, pauses_s=SPOKEN_PAUSES_S, size=(320, 180))
    return video, truth
