import numpy as np
import pytest
from skimage import data

from backend.errors import InputError
from backend.faces import detect_faces, speaker_face, turn_face
from backend.media import read_frames
from backend.synthetic_media import head_boxes, make_dialogue_video

TURNS = [(0.4, 1.6), (2.0, 3.2), (3.6, 4.6), (5.0, 5.8)]  # left, right, left, right speaker
ASTRONAUT_FACE = (177, 66, 95, 95)  # (x, y, w, h) of Eileen Collins' face in skimage's astronaut


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_dialogue_video(tmp_path_factory.mktemp("faces") / "dialogue.mp4", TURNS, duration_s=6.5)


def _iou(a, b):
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def _inside(box, region):
    x, y, w, h = box
    rx, ry, rw, rh = region
    return rx <= x and ry <= y and x + w <= rx + rw and y + h <= ry + rh


def test_detects_the_astronaut_face():
    boxes = detect_faces(data.astronaut())
    assert len(boxes) == 1
    assert _iou(boxes[0], ASTRONAUT_FACE) > 0.6


def test_detection_scales_with_large_frames():
    big = np.kron(data.astronaut(), np.ones((3, 3, 1), np.uint8))  # 1536 x 1536
    (box,) = detect_faces(big)
    assert _iou(box, tuple(3 * v for v in ASTRONAUT_FACE)) > 0.6


def test_blank_frames_have_no_face():
    blank = np.full((360, 640, 3), 128, np.uint8)
    assert detect_faces(blank) == []
    result = speaker_face([blank, blank, blank])
    assert not result.found and result.box is None and result.crop is None and result.method == "none"


def test_both_dialogue_faces_are_detected(video):
    (frame,) = read_frames(video, [1.0])
    boxes = detect_faces(frame)
    assert len(boxes) == 2
    left, right = head_boxes()
    assert _inside(boxes[0], left) and _inside(boxes[1], right)


@pytest.mark.parametrize("turn", range(len(TURNS)))
def test_speaker_is_the_face_with_the_moving_mouth(video, turn):
    result = turn_face(video, *TURNS[turn])
    assert result.found and result.method == "mouth_motion"
    assert _inside(result.box, head_boxes()[turn % 2])
    assert result.crop.shape == (result.box[3], result.box[2], 3)
    assert result.frame_index in range(3)


def test_right_speaker_is_not_the_largest_face(video):
    frames = read_frames(video, [2.3, 2.6, 2.9])
    largest = max(detect_faces(frames[0]), key=lambda b: b[2] * b[3])
    assert _inside(largest, head_boxes()[0])
    assert _inside(speaker_face(frames).box, head_boxes()[1])


def test_single_frame_or_still_faces_fall_back_to_the_largest(video):
    left = head_boxes()[0]
    single = speaker_face(read_frames(video, [2.5]))
    assert single.method == "largest" and _inside(single.box, left)
    still = speaker_face(read_frames(video, [1.7, 1.8, 1.9]))  # a pause: nobody's mouth moves
    assert still.method == "largest" and _inside(still.box, left)


def test_crop_is_the_frame_region(video):
    frames = read_frames(video, [0.6, 1.0, 1.4])
    result = speaker_face(frames)
    x, y, w, h = result.box
    np.testing.assert_array_equal(result.crop, frames[result.frame_index][y : y + h, x : x + w])


def test_bad_input():
    with pytest.raises(InputError, match="RGB frame"):
        detect_faces(np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="start <= end"):
        turn_face("unused.mp4", 3.0, 2.0)
