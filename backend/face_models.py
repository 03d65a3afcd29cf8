"""MediaPipe's BlazeFace (short range) detector and FaceMesh landmarker, run through ai-edge-litert.

The .tflite files come from the pinned mediapipe wheel (`backend.packaged`); mediapipe itself is never
imported. The graph logic MediaPipe wraps around the two networks is re-done here: SSD anchors and box
decoding with weighted non-maximum suppression for BlazeFace (options of MediaPipe's
face_detection_short_range graph), and the rotated, enlarged square region FaceMesh reads (its
face_detection_front_detection_to_roi graph).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from backend.packaged import packaged_path

BLAZEFACE_FILE = "face_detection_short_range.tflite"
FACEMESH_FILE = "face_landmark.tflite"

# BlazeFace short range (MediaPipe face_detection_short_range.pbtxt).
_DETECT_SIDE = 128
_STRIDES = (8, 16, 16, 16)
_SCORE_CLIP = 100.0
_MIN_SCORE = 0.5
_NMS_IOU = 0.3
_N_KEYPOINTS = 6  # right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion (the person's sides)

# FaceMesh (face_landmark.pbtxt and face_detection_front_detection_to_roi.pbtxt).
_MESH_SIDE = 192
_ROI_SCALE = 1.5  # the detection box, squared on its long side, enlarged 1.5x
_N_LANDMARKS = 468
UPPER_INNER_LIP, LOWER_INNER_LIP, MOUTH_RIGHT, MOUTH_LEFT = 13, 14, 61, 291

# One thread per interpreter: both networks take ~2-3 ms, and on the 2 shared cores a second thread
# made them slower (BlazeFace 2.2 -> 3.8 ms, FaceMesh 2.5 -> 4.2 ms under load), while video decoding
# and the app's other worker threads use the other core.
_THREADS = 1


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x, y, w, h in frame pixels
    score: float
    keypoints: np.ndarray  # [6, 2] frame pixels: right eye, left eye, nose, mouth, right ear, left ear


@dataclass(frozen=True)
class Landmarks:
    points: np.ndarray  # [468, 3] frame pixels (z in the same scale, relative to the face centre)
    presence: float  # FaceMesh's face-presence probability for the region it was given

    def mouth_opening(self) -> float:
        """Inner-lip gap (landmarks 13-14) over mouth width (61-291): ~0 closed, ~0.3+ wide open."""
        p = self.points[:, :2]
        width = float(np.linalg.norm(p[MOUTH_LEFT] - p[MOUTH_RIGHT]))
        return float(np.linalg.norm(p[LOWER_INNER_LIP] - p[UPPER_INNER_LIP])) / max(width, 1e-6)


@cache
def _anchor_centres() -> np.ndarray:
    """[896, 2] anchor centres (x, y) in [0, 1] of the 128x128 input (MediaPipe SsdAnchorsCalculator).

    Consecutive layers with the same stride share one feature map; every layer adds two anchors per
    cell (aspect ratio 1 and the interpolated scale). With fixed_anchor_size every anchor is 1x1, so
    only the centres matter.
    """
    centres = []
    layer = 0
    while layer < len(_STRIDES):
        same = layer
        while same < len(_STRIDES) and _STRIDES[same] == _STRIDES[layer]:
            same += 1
        per_cell = 2 * (same - layer)
        cells = math.ceil(_DETECT_SIDE / _STRIDES[layer])
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, per_cell, axis=1).reshape(-1, 2))
        layer = same
    return np.concatenate(centres).astype(np.float32)


def _interpreter(name: str, file: str):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(Path(packaged_path(name)) / file), num_threads=_THREADS)
    interpreter.allocate_tensors()
    return interpreter


class _Net:
    """One interpreter per thread (a TFLite interpreter must not be invoked from two threads at once);
    each thread builds its own on first use and keeps it."""

    def __init__(self, name: str, file: str) -> None:
        self.name, self.file = name, file
        self._local = threading.local()

    def __call__(self, tensor: np.ndarray) -> list[np.ndarray]:
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            interpreter = self._local.interpreter = _interpreter(self.name, self.file)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor)
        interpreter.invoke()
        return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


_blazeface = _Net("blazeface", BLAZEFACE_FILE)
_facemesh = _Net("facemesh", FACEMESH_FILE)


def check_available() -> None:
    """Raise ModelUnavailableError (naming the package) unless both .tflite files are installed and verified."""
    packaged_path("blazeface")
    packaged_path("facemesh")


def _letterbox(frame_rgb: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """The frame shrunk to fit 128x128, centred on black, scaled to [-1, 1]; with the scale and the
    padding (in input pixels) that map the outputs back to frame pixels."""
    h, w = frame_rgb.shape[:2]
    scale = _DETECT_SIDE / max(h, w)
    small_w, small_h = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(frame_rgb, (small_w, small_h), interpolation=cv2.INTER_AREA)
    pad = np.array([(_DETECT_SIDE - small_w) // 2, (_DETECT_SIDE - small_h) // 2], np.float32)
    square = np.zeros((_DETECT_SIDE, _DETECT_SIDE, 3), np.uint8)
    square[int(pad[1]) : int(pad[1]) + small_h, int(pad[0]) : int(pad[0]) + small_w] = small
    return (square.astype(np.float32) / 127.5 - 1.0)[None], scale, pad


def _weighted_nms(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """MediaPipe's WEIGHTED suppression: each kept detection is the score-weighted mean of the
    detections overlapping the best remaining one, with the best one's score."""
    order = list(np.argsort(-scores))
    kept = []
    while order:
        best = order[0]
        x0 = np.maximum(boxes[best, 0], boxes[order, 0])
        y0 = np.maximum(boxes[best, 1], boxes[order, 1])
        x1 = np.minimum(boxes[best, 2], boxes[order, 2])
        y1 = np.minimum(boxes[best, 3], boxes[order, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        areas = (boxes[order, 2] - boxes[order, 0]) * (boxes[order, 3] - boxes[order, 1])
        iou = inter / np.maximum(areas[0] + areas - inter, 1e-9)
        group = [i for i, o in zip(order, iou) if o > _NMS_IOU]
        weights = scores[group][:, None]
        kept.append((
            (boxes[group] * weights).sum(0) / weights.sum(),
            float(scores[best]),
            (keypoints[group] * weights[:, :, None]).sum(0) / weights.sum(),
        ))
        order = [i for i, o in zip(order, iou) if o <= _NMS_IOU]
    return kept


def detect(frame_rgb: np.ndarray, min_score: float = _MIN_SCORE) -> list[Detection]:
    """Faces in an RGB uint8 frame, best first. Short range: faces filling roughly a tenth or more
    of the frame's longer side (people within ~2 m of the camera)."""
    tensor, scale, pad = _letterbox(frame_rgb)
    outputs = _blazeface(tensor)
    raw = next(o for o in outputs if o.shape[-1] == 16)[0]
    logits = next(o for o in outputs if o.shape[-1] == 1)[0, :, 0]
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -_SCORE_CLIP, _SCORE_CLIP)))
    keep = scores >= min_score
    if not keep.any():
        return []
    # Offsets are in input pixels relative to the anchor centres (x_scale = w_scale = 128).
    anchors, raw, scores = _anchor_centres()[keep] * _DETECT_SIDE, raw[keep], scores[keep]
    centre = anchors + raw[:, 0:2]
    size = raw[:, 2:4]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)  # x0, y0, x1, y1, input pixels
    keypoints = anchors[:, None, :] + raw[:, 4:].reshape(-1, _N_KEYPOINTS, 2)
    found = []
    for box, score, points in _weighted_nms(boxes, scores, keypoints):
        (x0, y0), (x1, y1) = (box[:2] - pad) / scale, (box[2:] - pad) / scale
        found.append(Detection((float(x0), float(y0), float(x1 - x0), float(y1 - y0)), score, (points - pad) / scale))
    return found


def _roi(detection: Detection) -> tuple[np.ndarray, float, float]:
    """FaceMesh's input region: centre, side and rotation (radians) that levels the eyes."""
    x, y, w, h = detection.box
    right_eye, left_eye = detection.keypoints[0], detection.keypoints[1]
    angle = -math.atan2(-(left_eye[1] - right_eye[1]), left_eye[0] - right_eye[0])
    return np.array([x + w / 2, y + h / 2]), max(w, h) * _ROI_SCALE, angle


def landmarks(frame_rgb: np.ndarray, detection: Detection) -> Landmarks:
    """FaceMesh's 468 landmarks of the detected face, in frame pixels."""
    centre, side, angle = _roi(detection)
    cos, sin = math.cos(angle), math.sin(angle)
    scale = _MESH_SIDE / side
    # Frame -> crop: rotate by `angle` about the ROI centre, scale to 192 px, centre in the crop.
    forward = np.array([[cos, sin, 0.0], [-sin, cos, 0.0]]) * scale
    forward[:, 2] = _MESH_SIDE / 2 - forward[:, :2] @ centre
    crop = cv2.warpAffine(frame_rgb, forward, (_MESH_SIDE, _MESH_SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    outputs = _facemesh((crop.astype(np.float32) / 255.0)[None])
    mesh = next(o for o in outputs if o.size == 3 * _N_LANDMARKS).reshape(_N_LANDMARKS, 3).astype(np.float64)
    flag = float(next(o for o in outputs if o.size == 1).reshape(()))
    inverse = cv2.invertAffineTransform(forward)
    points = mesh.copy()
    points[:, :2] = mesh[:, :2] @ inverse[:, :2].T + inverse[:, 2]
    points[:, 2] = mesh[:, 2] / scale
    return Landmarks(points=points, presence=1.0 / (1.0 + math.exp(-flag)))
