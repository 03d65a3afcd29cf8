"""Hugging Face ZeroGPU: run the model part of an analysis inside `spaces.GPU`, asking for a GPU
time that fits the video. Where the `spaces` package is absent (anywhere but a Space), nothing changes.

ZeroGPU runs a decorated function in a forked process that holds a GPU for at most the requested
duration (a longer request waits longer in the queue), passing arguments and the result by pickling;
so only the pure model run is wrapped (paths, settings and a picklable progress callback in, the
analysis document out), never the database writes.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from backend.errors import InputError
from backend.media import probe

FLOOR_S = 60  # model loading, decoding and face detection of even a short clip
SECONDS_PER_VIDEO_S = 1.0  # speech recognition, faces and both models, per second of video
CAP_S = 300  # a longer request waits longer for a GPU and uses more of the visitor's daily GPU quota

F = TypeVar("F", bound=Callable[..., Any])


def gpu_seconds(video_s: float | None) -> int:
    """The GPU time to request for a video lasting `video_s` seconds: FLOOR_S plus SECONDS_PER_VIDEO_S
    per second of video, at most CAP_S. An unknown length (None) asks for the floor."""
    if video_s is None or not math.isfinite(video_s) or video_s <= 0:
        return FLOOR_S
    return min(CAP_S, FLOOR_S + math.ceil(SECONDS_PER_VIDEO_S * video_s))


def video_gpu_seconds(video: str | Path | None) -> int:
    """`gpu_seconds` of the video file's length; the floor when it cannot be read (the analysis itself
    then reports what is wrong with the file)."""
    if not video:
        return FLOOR_S
    try:
        return gpu_seconds(probe(video).duration_s)
    except (InputError, OSError):
        return FLOOR_S


def _spaces() -> Any | None:
    try:
        return importlib.import_module("spaces")
    except ImportError:
        return None


def on_gpu(fn: F, video_arg: str = "video") -> F:
    """`fn` inside `spaces.GPU` when the `spaces` package is importable, with a duration computed per
    call from the video named by the argument `video_arg`; `fn` itself otherwise."""
    spaces = _spaces()
    if spaces is None:
        return fn
    signature = inspect.signature(fn)

    def duration(*args: Any, **kwargs: Any) -> int:
        return video_gpu_seconds(signature.bind_partial(*args, **kwargs).arguments.get(video_arg))

    return spaces.GPU(duration=duration)(fn)
