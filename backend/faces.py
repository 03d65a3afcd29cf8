"""Faces in a dialogue video: who is speaking in each turn, and which turns share a speaker.

Faces are found with MediaPipe's BlazeFace and their lips measured with FaceMesh (`backend.face_models`);
without those packaged models, OpenCV's Haar cascade finds faces and the darkness of the mouth region
stands in for the lips (a warning says so). Faces are tracked across the frames sampled from all turns;
in each turn the speaker is the track whose lips move most, while the voice is active when a voice
activity curve is given. Turns are then grouped into speakers by track, position and appearance.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from backend import face_models
from backend.errors import InputError, ModelUnavailableError
from backend.media import probe, read_frames

Box = tuple[int, int, int, int]  # x, y, w, h in pixels
Activity = tuple[np.ndarray, float]  # per-frame speech probability and the frame hop in seconds

_CASCADE = "haarcascade_frontalface_default.xml"
_MIN_FACE_FRACTION = 0.1  # smallest face side, as a fraction of the frame's shorter side
_HAAR_SIDE = 360  # frames are downscaled to this shorter side before Haar detection (speed)
_MAX_FACES = 4  # largest faces per frame that get landmarks (a crowd in the background is not the speaker)
_TRACK_IOU = 0.3

# Frames sampled per turn: a few per second catches syllable-rate lip motion; the caps bound the cost
# (each sampled frame costs a decode seek, one detection and one landmark pass per face).
SAMPLE_FPS = 8.0
MIN_FRAMES_PER_TURN = 4
MAX_FRAMES_PER_TURN = 24
MAX_FRAMES = 480  # per call: long videos sample their turns more sparsely
# Decoded RGB frames held at once: turns are read in batches under this (200 turns of 720p would be 1.6 GB).
FRAME_BUDGET_BYTES = 32 * 2**20

# Mean lip change between samples below which a mouth counts as still (codec noise, landmark jitter).
# FaceMesh: inner-lip gap / mouth width. Haar fallback: mouth-region darkness (see _mouth_darkness).
_MIN_MOTION = {"facemesh": 0.02, "haar": 0.01}
# Less than 1: voice activity is soft (0.3 on a hesitant or unusual voice), so a speaker whose lips move
# all through the turn must still score above the floor.
_QUIET_WEIGHT = 0.5
_ALIKE = 0.7  # a second face whose lip score is at least this share of the best makes the turn ambiguous
_HIST_BINS = (16, 8)  # hue x saturation bins of the appearance descriptor
_SAME_LOOK = 0.35  # Hellinger distance of descriptors below which two tracks at one place are one person
_SAME_LOOK_ANYWHERE = 0.15  # ... and below which they are one person wherever they are (camera cuts)


@dataclass
class FaceResult:
    """The speaking face of one turn."""

    found: bool
    box: Box | None = None
    crop: np.ndarray | None = None  # RGB, the box's region of the chosen frame
    frame_index: int | None = None  # index into the turn's sampled frames
    time_s: float | None = None  # when that frame is shown (set by attribute_speakers)
    method: str = "none"  # "lips+voice", "lips", "largest" or "none"
    track: int | None = None  # face track id, shared by the turns of one call where the face stays in place
    confidence: float = 0.0  # 0..1: how clearly this face's lips moved more than the others'
    uncertain: str | None = None  # why the attribution is doubtful; None when it is clear
    descriptor: np.ndarray | None = None  # appearance of the crop (hue-saturation histogram, unit norm)
    others: tuple[int, ...] = ()  # the other tracks seen in this turn: different people


@dataclass(frozen=True)
class Speakers:
    labels: list[str | None]  # SPEAKER_1..n per turn in order of first appearance; None: no face
    uncertain: list[int]  # turns whose speaker is doubtful (no face, unclear lips, linked by looks only)


@dataclass
class _Face:
    box: Box
    lips: float | None  # FaceMesh mouth opening, or mouth darkness in the Haar fallback
    track: int = -1


# ---------------------------------------------------------------- detection backends


def fallback_warning() -> str | None:
    """Why faces fall back to the Haar cascade (the packaged face models are missing), or None."""
    try:
        face_models.check_available()
    except ModelUnavailableError as e:
        return (
            f"face models unavailable ({e}); faces were found with OpenCV's Haar cascade and the speaker "
            "picked by mouth darkness, which is less reliable. Install mediapipe==0.10.21 with --no-deps "
            "(it is in requirements-nodeps.txt)"
        )
    return None


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / _CASCADE))
    if cascade.empty():
        raise RuntimeError(f"OpenCV's {_CASCADE} is missing from {cv2.data.haarcascades}; reinstall opencv.")
    return cascade


def _check_frame(frame_rgb: np.ndarray) -> np.ndarray:
    if not isinstance(frame_rgb, np.ndarray) or frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
        shape = getattr(frame_rgb, "shape", type(frame_rgb).__name__)
        raise InputError(f"Expected an RGB frame of shape (height, width, 3), got {shape}.")
    return np.ascontiguousarray(frame_rgb, dtype=np.uint8)


def _haar_boxes(gray: np.ndarray, min_side: int) -> list[Box]:
    h, w = gray.shape
    scale = min(1.0, _HAAR_SIDE / min(h, w))
    small = gray if scale == 1 else cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    side = max(20, round(min_side * scale))
    found = _cascade().detectMultiScale(small, scaleFactor=1.15, minNeighbors=5, minSize=(side, side))
    return [tuple(int(round(v / scale)) for v in box) for box in found]


def _mouth_darkness(gray: np.ndarray, box: Box) -> float:
    """How much darker the mouth region (lower third, middle half of the box) is than the whole box:
    an open mouth shows a dark cavity. The Haar fallback's lip signal."""
    x, y, w, h = box
    face = gray[y : y + h, x : x + w].astype(np.float32)
    mouth = face[2 * h // 3 :, w // 4 : 3 * w // 4]
    return float(1.0 - mouth.mean() / max(face.mean(), 1.0))


def _clip_box(box: tuple[float, float, float, float], shape: tuple[int, ...]) -> Box | None:
    x0, y0 = max(0, int(round(box[0]))), max(0, int(round(box[1])))
    x1, y1 = min(shape[1], int(round(box[0] + box[2]))), min(shape[0], int(round(box[1] + box[3])))
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def _faces(frame_rgb: np.ndarray, backend: str, min_fraction: float) -> list[_Face]:
    """Faces of one frame, largest first, with their lip measure (landmarks for the largest few)."""
    frame = _check_frame(frame_rgb)
    min_side = min_fraction * min(frame.shape[:2])
    faces = []
    if backend == "facemesh":
        detections = [d for d in face_models.detect(frame) if max(d.box[2], d.box[3]) >= min_side]
        detections.sort(key=lambda d: -d.box[2] * d.box[3])
        for k, detection in enumerate(detections):
            box = _clip_box(detection.box, frame.shape)
            if box is None:
                continue
            lips = None
            if k < _MAX_FACES:
                marks = face_models.landmarks(frame, detection)
                lips = marks.mouth_opening() if marks.presence >= 0.5 else None
            faces.append(_Face(box, lips))
    else:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        for box in sorted(_haar_boxes(gray, round(min_side)), key=lambda b: -b[2] * b[3]):
            faces.append(_Face(box, _mouth_darkness(gray, box)))
    return faces


def _backend() -> str:
    """"facemesh" when the packaged models are there, else "haar" (with a RuntimeWarning; the analysis
    reports `fallback_warning()` in its own warnings)."""
    message = fallback_warning()
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return "haar"
    return "facemesh"


def detect_faces(frame_rgb: np.ndarray, min_fraction: float = _MIN_FACE_FRACTION) -> list[Box]:
    """Faces as (x, y, w, h), sorted left to right; faces smaller than min_fraction of the frame's
    shorter side are ignored. BlazeFace boxes cover brows to chin; Haar's (fallback) are similar."""
    frame = _check_frame(frame_rgb)
    min_side = min_fraction * min(frame.shape[:2])
    if _backend() == "haar":
        return sorted(_haar_boxes(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), round(min_side)))
    boxes = [_clip_box(d.box, frame.shape) for d in face_models.detect(frame) if max(d.box[2:]) >= min_side]
    return sorted(b for b in boxes if b is not None)


# ---------------------------------------------------------------- tracking and the speaker of a turn


def _iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / max(1, a[2] * a[3] + b[2] * b[3] - inter)


@dataclass
class _Tracker:
    """Links faces across sampled frames: each face joins the free track whose last box overlaps it most."""

    last: dict[int, Box] = field(default_factory=dict)

    def update(self, faces: list[_Face]) -> None:
        free = dict(self.last)
        for face in faces:  # largest first
            best = max(free, key=lambda t: _iou(free[t], face.box), default=None)
            if best is not None and _iou(free[best], face.box) >= _TRACK_IOU:
                face.track = best
                del free[best]
            else:
                face.track = len(self.last)
            self.last[face.track] = face.box


def _speech_at(activity: Activity | None, times: Sequence[float]) -> np.ndarray | None:
    if activity is None:
        return None
    probs, hop_s = activity
    probs = np.asarray(probs, np.float64)
    if probs.size == 0 or hop_s <= 0:
        return None
    index = np.clip(np.floor(np.asarray(times) / hop_s).astype(int), 0, probs.size - 1)
    return probs[index]


def _lip_score(lips: np.ndarray, speech: np.ndarray | None) -> float | None:
    """Mean lip change between consecutive samples; with voice activity, the change while the voice is
    on minus _QUIET_WEIGHT times the change while it is off (a listener who laughs in the pauses scores
    lower)."""
    pairs = ~np.isnan(lips[1:]) & ~np.isnan(lips[:-1])
    if not pairs.any():
        return None
    change = np.abs(np.diff(lips))[pairs]
    if speech is None:
        return float(change.mean())
    voice = ((speech[1:] + speech[:-1]) / 2)[pairs]
    talking = float((change * voice).sum() / voice.sum()) if voice.sum() > 0 else 0.0
    quiet = float((change * (1 - voice)).sum() / (1 - voice).sum()) if (1 - voice).sum() >= 1 else 0.0
    return talking - _QUIET_WEIGHT * quiet


def _descriptor(crop: np.ndarray) -> np.ndarray:
    """Square-rooted, unit-norm hue-saturation histogram: dot products of two are 1 - Hellinger^2."""
    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, list(_HIST_BINS), [0, 180, 0, 256]).ravel()
    root = np.sqrt(hist / max(hist.sum(), 1.0))
    return root / max(np.linalg.norm(root), 1e-9)


def _choose(
    frames: Sequence[np.ndarray], faces: Sequence[list[_Face]], speech: np.ndarray | None, backend: str
) -> FaceResult:
    """The speaking face of one turn from its sampled frames and their tracked faces."""
    tracks = sorted({f.track for frame_faces in faces for f in frame_faces})
    if not tracks:
        return FaceResult(found=False, uncertain="no face visible")
    lips = {t: np.full(len(frames), np.nan) for t in tracks}
    boxes: dict[int, list[tuple[int, Box]]] = {t: [] for t in tracks}
    for i, frame_faces in enumerate(faces):
        for f in frame_faces:
            boxes[f.track].append((i, f.box))
            if f.lips is not None:
                lips[f.track][i] = f.lips
    # Whether a mouth moves at all is judged on the lips alone (the floor is codec and landmark noise);
    # which of the moving mouths speaks, on the lips with the voice.
    floor = _MIN_MOTION[backend]
    if speech is not None and speech.sum() < 1:  # no voice heard in the turn (music, an odd voice): lips alone
        speech = None
    moving = [t for t in tracks if (_lip_score(lips[t], None) or 0.0) >= floor]
    scores = {t: _lip_score(lips[t], speech) for t in moving}
    ranked = sorted(moving, key=lambda t: -scores[t])
    if ranked and scores[ranked[0]] > 0:
        track, best = ranked[0], scores[ranked[0]]
        second = scores[ranked[1]] if len(ranked) > 1 else 0.0
        confidence = float(np.clip(1 - max(second, 0.0) / best, 0, 1))
        uncertain = "two faces move their lips alike" if second >= _ALIKE * best else None
        method = "lips" if speech is None else "lips+voice"
    else:
        track = max(tracks, key=lambda t: np.median([b[2] * b[3] for _, b in boxes[t]]))
        confidence, method = 0.0, "largest"
        if ranked:
            uncertain = "lips move only while no voice is heard; took the largest face"
        elif len(tracks) == 1:
            uncertain = "one face visible, its lips do not move"
        else:
            uncertain = "no visible face moves its lips; took the largest"
    index, (x, y, w, h) = boxes[track][len(boxes[track]) // 2]
    crop = frames[index][y : y + h, x : x + w].copy()
    return FaceResult(
        found=True, box=(x, y, w, h), crop=crop, frame_index=index, method=method, track=track,
        confidence=confidence, uncertain=uncertain, descriptor=_descriptor(crop),
        others=tuple(t for t in tracks if t != track),
    )


def speaker_face(
    frames: Sequence[np.ndarray], speech: Sequence[float] | None = None, min_fraction: float = _MIN_FACE_FRACTION
) -> FaceResult:
    """The face of whoever is speaking across `frames` (RGB, one turn, in time order), with the speech
    probability at each frame when known. No face is a normal result (found=False)."""
    if speech is not None and len(speech) != len(frames):
        raise InputError(f"Got {len(speech)} speech probabilities for {len(frames)} frames; give one per frame.")
    backend = _backend()
    tracker = _Tracker()
    faces = []
    for frame in frames:
        frame_faces = _faces(frame, backend, min_fraction)
        tracker.update(frame_faces)
        faces.append(frame_faces)
    return _choose(frames, faces, None if speech is None else np.asarray(speech, np.float64), backend)


# ---------------------------------------------------------------- whole videos


def sample_times(spans: Sequence[tuple[float, float]]) -> list[list[float]]:
    """Frame times sampled in each (start, end) turn: SAMPLE_FPS, within the per-turn and per-call caps."""
    for start, end in spans:
        if start is None or end is None or end < start:
            raise InputError(f"Turn times must satisfy start <= end, got start={start}, end={end}. Fix the turn.")
    wanted = [int(np.clip(round((end - start) * SAMPLE_FPS), MIN_FRAMES_PER_TURN, MAX_FRAMES_PER_TURN))
              for start, end in spans]
    if sum(wanted) > MAX_FRAMES:
        shrink = MAX_FRAMES / sum(wanted)
        wanted = [max(MIN_FRAMES_PER_TURN, int(n * shrink)) for n in wanted]
    return [[start + (k + 0.5) * (end - start) / n for k in range(n)] for (start, end), n in zip(spans, wanted)]


def _batches(times: list[list[float]], frame_bytes: int, budget: int) -> Iterator[list[int]]:
    """Turn indices in groups whose frames fit in `budget` bytes (at least one turn per group)."""
    group: list[int] = []
    held = 0
    for i, turn_times in enumerate(times):
        size = len(turn_times) * frame_bytes
        if group and held + size > budget:
            yield group
            group, held = [], 0
        group.append(i)
        held += size
    if group:
        yield group


def attribute_speakers(
    video: str | Path,
    spans: Sequence[tuple[float, float]],
    activity: Activity | None = None,
    *,
    frame_budget_bytes: int = FRAME_BUDGET_BYTES,
    min_fraction: float = _MIN_FACE_FRACTION,
) -> list[FaceResult]:
    """The speaking face of each (start, end) turn of `video`.

    `activity` = (speech probability per frame, frame hop in seconds), e.g. `backend.vad.voice_activity`;
    without it the lips alone decide. Faces are tracked across all turns (track ids are shared while a
    face stays in place), frames are decoded in batches of at most `frame_budget_bytes`.
    """
    times = sample_times(spans)
    if not spans:
        return []
    info = probe(video)
    backend = _backend()
    tracker = _Tracker()
    results: list[FaceResult] = []
    for group in _batches(times, info.width * info.height * 3, frame_budget_bytes):
        flat = [t for i in group for t in times[i]]
        frames = read_frames(video, flat)
        at = 0
        for i in group:
            turn_frames = frames[at : at + len(times[i])]
            at += len(times[i])
            faces = []
            for frame in turn_frames:
                frame_faces = _faces(frame, backend, min_fraction)
                tracker.update(frame_faces)
                faces.append(frame_faces)
            result = _choose(turn_frames, faces, _speech_at(activity, times[i]), backend)
            if result.found:
                result.time_s = times[i][result.frame_index]
            results.append(result)
    return results


def turn_face(path: str | Path, start: float, end: float, activity: Activity | None = None) -> FaceResult:
    """The speaker's face in one turn (see `attribute_speakers`); the same face the whole-video call picks."""
    return attribute_speakers(path, [(start, end)], activity)[0]


# ---------------------------------------------------------------- speakers


def cluster_speakers(faces: Sequence[FaceResult]) -> Speakers:
    """Group turns into speakers SPEAKER_1..n (numbered by first appearance) from `attribute_speakers`.

    Turns of one track are one person. Two tracks are linked when they never share a turn (faces seen
    together are different people) and either overlap in place and look alike, or look nearly
    identical anywhere (a camera cut). Turns without a face get None.
    """
    tracks: dict[int, list[int]] = {}
    for i, face in enumerate(faces):
        if face.found and face.track is not None:
            tracks.setdefault(face.track, []).append(i)
    looks = {t: _mean_unit([faces[i].descriptor for i in turns]) for t, turns in tracks.items()}
    places = {t: _median_box([faces[i].box for i in turns]) for t, turns in tracks.items()}
    apart = {t: {o for i in turns for o in faces[i].others} for t, turns in tracks.items()}
    group = {t: t for t in tracks}
    by_look_only: set[int] = set()

    def root(t: int) -> int:
        while group[t] != t:
            t = group[t]
        return t

    def members(r: int) -> set[int]:
        return {t for t in tracks if root(t) == r}

    pairs = sorted(
        ((_look_distance(looks[a], looks[b]), a, b) for a in tracks for b in tracks if a < b),
        key=lambda p: p[0],
    )
    for distance, a, b in pairs:
        ra, rb = root(a), root(b)
        if ra == rb:
            continue
        ma, mb = members(ra), members(rb)
        if any(o in mb for t in ma for o in apart[t]) or any(o in ma for t in mb for o in apart[t]):
            continue
        same_place = _iou(places[a], places[b]) >= _TRACK_IOU
        if (same_place and distance < _SAME_LOOK) or distance < _SAME_LOOK_ANYWHERE:
            group[rb] = ra
            if not same_place:
                by_look_only.update(tracks[a] + tracks[b])
    names: dict[int, str] = {}
    labels: list[str | None] = []
    for face in faces:
        if not face.found or face.track is None:
            labels.append(None)
            continue
        r = root(face.track)
        names.setdefault(r, f"SPEAKER_{len(names) + 1}")
        labels.append(names[r])
    uncertain = [i for i, face in enumerate(faces) if not face.found or face.uncertain or i in by_look_only]
    return Speakers(labels=labels, uncertain=uncertain)


def _mean_unit(vectors: Sequence[np.ndarray]) -> np.ndarray:
    mean = np.mean(vectors, axis=0)
    return mean / max(np.linalg.norm(mean), 1e-9)


def _median_box(boxes: Sequence[Box]) -> Box:
    return tuple(int(v) for v in np.median(boxes, axis=0))


def _look_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Hellinger distance of two square-rooted unit histograms."""
    return float(np.sqrt(max(0.0, 1.0 - float(a @ b))))
