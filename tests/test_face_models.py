"""BlazeFace and FaceMesh run through ai-edge-litert on the packaged mediapipe .tflite files."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from skimage import data

from backend import face_models
from backend.synthetic_media import _compose, head_boxes

SIZE = (640, 360)
ASTRONAUT_FACE = (177, 66, 95, 95)  # (x, y, w, h) of Eileen Collins' face in skimage's astronaut
HEAD_CROP_ORIGIN = (130, 20)  # synthetic_media pastes astronaut[20:220, 130:320] as each head
HEAD_CROP_SIZE = (190, 200)


def _iou(a, b):
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def true_faces(size=SIZE):
    """The astronaut's face box inside each pasted head (the right head is mirrored). head_boxes()
    frame the whole head image (helmet, neck, background), about four times the face's area."""
    boxes = []
    for side, (x, y, w, h) in enumerate(head_boxes(size)):
        sx, sy = w / HEAD_CROP_SIZE[0], h / HEAD_CROP_SIZE[1]
        fx = ASTRONAUT_FACE[0] - HEAD_CROP_ORIGIN[0]
        if side == 1:
            fx = HEAD_CROP_SIZE[0] - fx - ASTRONAUT_FACE[2]
        fy = ASTRONAUT_FACE[1] - HEAD_CROP_ORIGIN[1]
        boxes.append((x + fx * sx, y + fy * sy, ASTRONAUT_FACE[2] * sx, ASTRONAUT_FACE[3] * sy))
    return boxes


def test_anchors_follow_the_short_range_layout():
    anchors = face_models._anchor_centres()
    assert anchors.shape == (896, 2)
    # stride 8: 16x16 cells x 2 anchors; strides 16 (three layers share one map): 8x8 cells x 6 anchors
    np.testing.assert_allclose(anchors[0], anchors[1])
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[511], [15.5 / 16, 15.5 / 16])
    np.testing.assert_allclose(anchors[512:518], [[0.5 / 8, 0.5 / 8]] * 6)
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_blazeface_finds_the_astronaut_with_keypoints_in_place():
    (face,) = face_models.detect(data.astronaut())
    assert face.score > 0.8
    assert _iou(face.box, ASTRONAUT_FACE) > 0.6
    right_eye, left_eye, nose, mouth = face.keypoints[:4]
    assert right_eye[0] < nose[0] < left_eye[0]  # the person's right eye is on the image's left
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]


def test_blazeface_finds_both_dialogue_faces():
    found = sorted(face_models.detect(_compose(SIZE, (0, 0))), key=lambda d: d.box[0])
    assert len(found) == 2
    for detection, truth, head in zip(found, true_faces(), head_boxes()):
        assert _iou(detection.box, truth) >= 0.5
        assert 0.15 < _iou(detection.box, head) < 0.4  # the face, not the whole pasted head image


def test_no_face_gives_no_detection():
    assert face_models.detect(np.full((360, 640, 3), 128, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    assert face_models.detect(noise) == []


def test_landmarks_cover_the_face_and_follow_rotation():
    image = data.astronaut()
    (face,) = face_models.detect(image)
    marks = face_models.landmarks(image, face)
    assert marks.points.shape == (468, 3) and marks.presence > 0.9
    x, y, w, h = face.box
    inside = (marks.points[:, 0] > x - 0.2 * w) & (marks.points[:, 0] < x + 1.2 * w)
    inside &= (marks.points[:, 1] > y - 0.4 * h) & (marks.points[:, 1] < y + 1.2 * h)
    assert inside.mean() > 0.95
    # Rotated 90 degrees, the ROI is rotated with the eyes: the nose tip (landmark 1) lands on the
    # detector's nose keypoint, as it does upright.
    turned = np.ascontiguousarray(np.rot90(image))
    (face90,) = face_models.detect(turned)
    marks90 = face_models.landmarks(turned, face90)
    assert marks90.presence > 0.9
    assert np.linalg.norm(marks90.points[1, :2] - face90.keypoints[2]) < 0.15 * face90.box[2]


def test_mouth_opening_grows_with_the_drawn_mouth():
    """The synthetic mouth is a dark ellipse drawn on the photo (level 0 = the photo's own smile,
    1..7 increasingly open). FaceMesh's inner lips follow it from level 3 up; the thin levels 1-2
    read below the smile, whose parted lips show teeth."""
    def openings(level):
        frame = _compose(SIZE, (level, level))
        found = sorted(face_models.detect(frame), key=lambda d: d.box[0])
        return [face_models.landmarks(frame, d).mouth_opening() for d in found]

    closed = openings(0)
    for level in range(3, 8):
        assert all(o > c + 0.03 for o, c in zip(openings(level), closed)), level
    wide = openings(7)
    assert all(w > 1.4 * c for w, c in zip(wide, closed))


def test_interpreters_are_per_thread():
    frames = [_compose(SIZE, (level, 7 - level)) for level in range(8)]

    def boxes(frame):
        return [d.box for d in face_models.detect(frame)]

    alone = [boxes(f) for f in frames]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(boxes, frames * 4))
    assert together == alone * 4

