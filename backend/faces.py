"""Face detection (OpenCV Haar cascade) and picking the speaking face by mouth motion."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from backend.errors import InputError
from backend.media import read_frames

Box = tuple[int, int, int, int]  # x, y, w, h in pixels

_CASCADE = "haarcascade_frontalface_default.xml"
_MIN_FACE_FRACTION = 0.1  # smallest face side, as a fraction of the frame's shorter side
_DETECT_SIDE = 360  # frames are downscaled to this shorter side before detection (speed)
_TRACK_IOU = 0.3
_MOUTH_SIZE = (32, 12)  # (w, h) the mouth crops are resized to before differencing
_MIN_MOTION = 1.5  # mean abs grey-level change below this is codec noise, not a moving mouth


@dataclass
class FaceResult:
    found: bool
    box: Box | None = None
    crop: np.ndarray | None = None  # RGB
    frame_index: int | None = None  # index into the frames given
    method: str = "none"  # "mouth_motion", "largest" or "none"


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / _CASCADE))
    if cascade.empty():
        raise RuntimeError(f"OpenCV's {_CASCADE} is missing from {cv2.data.haarcascades}; reinstall opencv.")
    return cascade


def _to_gray(frame_rgb: np.ndarray) -> np.ndarray:
    if not isinstance(frame_rgb, np.ndarray) or frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
        shape = getattr(frame_rgb, "shape", type(frame_rgb).__name__)
        raise InputError(f"Expected an RGB frame of shape (height, width, 3), got {shape}.")
    return cv2.cvtColor(np.ascontiguousarray(frame_rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)


def _detect_gray(gray: np.ndarray, min_fraction: float) -> list[Box]:
    h, w = gray.shape
    scale = min(1.0, _DETECT_SIDE / min(h, w))
    small = gray
    if scale < 1:
        small = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    side = max(20, round(min_fraction * min(small.shape)))
    found = _cascade().detectMultiScale(small, scaleFactor=1.15, minNeighbors=5, minSize=(side, side))
    boxes = [tuple(int(round(v / scale)) for v in box) for box in found]
    return sorted(boxes)


def detect_faces(frame_rgb: np.ndarray, min_fraction: float = _MIN_FACE_FRACTION) -> list[Box]:
    """Frontal faces as (x, y, w, h), sorted left to right; faces smaller than min_fraction are ignored."""
    return _detect_gray(_to_gray(frame_rgb), min_fraction)


def _iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _track(detections: Sequence[list[Box]]) -> list[list[tuple[int, Box]]]:
    """Link boxes across frames: each box joins the free track whose last box overlaps it most."""
    tracks: list[list[tuple[int, Box]]] = []
    for i, boxes in enumerate(detections):
        free = list(tracks)
        for box in sorted(boxes, key=lambda b: -b[2] * b[3]):
            best = max(free, key=lambda t: _iou(t[-1][1], box), default=None)
            if best is not None and _iou(best[-1][1], box) >= _TRACK_IOU:
                best.append((i, box))
                free.remove(best)
            else:
                tracks.append([(i, box)])
    return tracks


def _median_box(track: list[tuple[int, Box]]) -> Box:
    return tuple(int(v) for v in np.median([box for _, box in track], axis=0))


def _mouth_motion(grays: Sequence[np.ndarray], track: list[tuple[int, Box]]) -> float:
    """Mean abs difference of consecutive mouth crops (lower third of the track's median box)."""
    x, y, w, h = _median_box(track)
    crops = []
    for i, _ in track:
        frame_h, frame_w = grays[i].shape
        mouth = grays[i][max(0, y + 2 * h // 3) : min(frame_h, y + h), max(0, x) : min(frame_w, x + w)]
        crops.append(cv2.resize(mouth, _MOUTH_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32))
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(crops, crops[1:])]))


def _result(frames: Sequence[np.ndarray], track: list[tuple[int, Box]], method: str) -> FaceResult:
    index, (x, y, w, h) = track[len(track) // 2]
    crop = frames[index][max(0, y) : y + h, max(0, x) : x + w].copy()
    return FaceResult(found=True, box=(x, y, w, h), crop=crop, frame_index=index, method=method)


def speaker_face(frames: Sequence[np.ndarray], min_fraction: float = _MIN_FACE_FRACTION) -> FaceResult:
    """The face of whoever is speaking across `frames` (RGB, same turn, in time order).

    Faces are tracked across frames and the one whose mouth moves most is chosen; with a single
    frame or no mouth motion above codec noise, the largest face. No face is a normal result.
    """
    grays = [_to_gray(frame) for frame in frames]
    tracks = _track([_detect_gray(gray, min_fraction) for gray in grays])
    if not tracks:
        return FaceResult(found=False)
    moving = [(_mouth_motion(grays, t), t) for t in tracks if len(t) >= 2]
    motion, track = max(moving, key=lambda m: m[0], default=(0.0, None))
    if track is not None and motion >= _MIN_MOTION:
        return _result(frames, track, "mouth_motion")
    largest = max(tracks, key=lambda t: _median_box(t)[2] * _median_box(t)[3])
    return _result(frames, largest, "largest")


def _sample_times(start: float, end: float, n_frames: int) -> list[float]:
    if start is None or end is None or end < start:
        raise InputError(f"Turn times must satisfy start <= end, got start={start}, end={end}. Fix the turn.")
    if n_frames < 1:
        raise InputError(f"n_frames must be at least 1, got {n_frames}.")
    step = (end - start) / n_frames
    return [start + (k + 0.5) * step for k in range(n_frames)]


def turn_faces(path: str | Path, spans: Sequence[tuple[float, float]], n_frames: int = 3) -> list[FaceResult]:
    """The speaker's face in each (start, end) turn, from `n_frames` frames spread evenly inside it.

    The frames of all turns are decoded in one pass over the video.
    """
    times = [t for start, end in spans for t in _sample_times(start, end, n_frames)]
    frames = read_frames(path, times)
    return [speaker_face(frames[i : i + n_frames]) for i in range(0, len(frames), n_frames)]


def turn_face(path: str | Path, start: float, end: float, n_frames: int = 3) -> FaceResult:
    """The speaker's face in one turn (see `turn_faces`)."""
    return turn_faces(path, [(start, end)], n_frames)[0]
