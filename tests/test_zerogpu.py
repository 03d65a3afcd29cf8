"""ZeroGPU: the GPU time asked for fits the video, and without the `spaces` package nothing is wrapped."""

from __future__ import annotations

import pickle
import sys
import types

import gradio as gr
import pytest

from backend import service
from backend.analyze import analyze
from backend.errors import InputError
from backend.synthetic_media import make_silent_video
from backend.zerogpu import CAP_S, FLOOR_S, SECONDS_PER_VIDEO_S, gpu_seconds, on_gpu, video_gpu_seconds
from ui.callbacks import StageProgress


def test_gpu_seconds_grow_with_the_video_between_a_floor_and_a_cap():
    assert gpu_seconds(None) == gpu_seconds(0.0) == gpu_seconds(float("nan")) == FLOOR_S
    assert gpu_seconds(10.0) == FLOOR_S + 10 * SECONDS_PER_VIDEO_S
    assert gpu_seconds(10.2) == FLOOR_S + 11, "a started second is asked for"
    assert gpu_seconds(60.0) < gpu_seconds(120.0)
    assert gpu_seconds(10_000.0) == CAP_S


def test_video_gpu_seconds_reads_the_video_length(tmp_path):
    video = make_silent_video(tmp_path / "clip.mp4", duration_s=3.0)
    assert video_gpu_seconds(video) == gpu_seconds(3.0) == FLOOR_S + 3
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    assert video_gpu_seconds(broken) == FLOOR_S, "the analysis itself reports an unreadable file"
    assert video_gpu_seconds(None) == FLOOR_S


def _analysis(video, subtitles=None, profile=None):
    return ("ran", video, subtitles, profile)


def test_without_spaces_the_function_is_itself(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # `import spaces` raises ImportError
    assert on_gpu(_analysis) is _analysis


@pytest.fixture
def fake_spaces(monkeypatch):
    """A stand-in for Hugging Face's `spaces` package that records what `spaces.GPU` was given."""
    module = types.ModuleType("spaces")
    module.requests = []

    def gpu(duration):
        def decorate(fn):
            def on_gpu_call(*args, **kwargs):
                module.requests.append(duration(*args, **kwargs))
                return fn(*args, **kwargs)

            return on_gpu_call

        return decorate

    module.GPU = gpu
    monkeypatch.setitem(sys.modules, "spaces", module)
    return module


def test_with_spaces_the_call_asks_for_the_video_length(fake_spaces, tmp_path):
    video = make_silent_video(tmp_path / "clip.mp4", duration_s=4.0)
    wrapped = on_gpu(_analysis)
    assert wrapped is not _analysis
    assert wrapped(video, subtitles="a.srt") == ("ran", video, "a.srt", None)
    assert wrapped(video=str(video), profile="offline") == ("ran", str(video), None, "offline")
    assert fake_spaces.requests == [gpu_seconds(4.0), gpu_seconds(4.0)]


def test_the_analysis_asks_for_its_video_length(fake_spaces, tmp_path, data_dir, models):
    """`analyze` (the model run the service wraps) names its video `video`, which the duration reads."""
    video = make_silent_video(tmp_path / "clip.mp4", duration_s=2.0)
    with pytest.raises(InputError, match="no audio track"):
        on_gpu(analyze)(video)
    assert fake_spaces.requests == [gpu_seconds(2.0)]


def test_off_a_space_the_service_runs_the_analysis_itself():
    assert service.run_models is analyze


def test_the_ui_progress_callback_pickles_into_a_gpu_worker():
    callback = pickle.loads(pickle.dumps(StageProgress(gr.Progress())))
    callback(0.5, "faces")  # outside an event it reports nothing, and does not fail
