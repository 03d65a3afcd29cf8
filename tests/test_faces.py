from dataclasses import replace

import numpy as np
import pytest
from skimage import data

from backend import face_models, faces
from backend.errors import InputError, ModelUnavailableError
from backend.faces import (
    FaceResult, attribute_speakers, cluster_speakers, detect_faces, fallback_warning, sample_times, speaker_face,
    turn_face,
)
from backend.media import read_frames
from backend.packaged import PACKAGED, packaged_path
from backend.synthetic_media import head_boxes, make_dialogue_video

TURNS = [(0.4, 1.6), (2.0, 3.2), (3.6, 4.6), (5.0, 5.8)]  # left, right, left, right speaker
ASTRONAUT_FACE = (177, 66, 95, 95)  # (x, y, w, h) of Eileen Collins' face in skimage's astronaut


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_dialogue_video(tmp_path_factory.mktemp("faces") / "dialogue.mp4", TURNS, duration_s=6.5)


def random_turns(duration_s: float, seed: int) -> list[tuple[float, float]]:
    """Turns of 0.8-4 s with 0.2-1 s pauses; turn i is spoken by face i % 2."""
    rng = np.random.default_rng(seed)
    turns, t = [], 0.3
    while (end := t + rng.uniform(0.8, 4.0)) < duration_s - 0.3:
        turns.append((t, end))
        t = end + rng.uniform(0.2, 1.0)
    return turns


@pytest.fixture(scope="module")
def long_dialogue(tmp_path_factory):
    turns = random_turns(30.0, seed=3)
    path = make_dialogue_video(tmp_path_factory.mktemp("faces") / "long.mp4", turns, duration_s=30.0, seed=3)
    return path, turns


@pytest.fixture
def without_face_models(monkeypatch):
    def missing(name):
        raise ModelUnavailableError(f"face_detection_short_range.tflite is missing from mediapipe ({name})")

    monkeypatch.setattr(face_models, "packaged_path", missing)

    def no_model(*args):
        raise AssertionError("the face models must not run without their files")

    monkeypatch.setattr(face_models, "detect", no_model)
    monkeypatch.setattr(face_models, "landmarks", no_model)


def _iou(a, b):
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def _inside(box, region):
    x, y, w, h = box
    rx, ry, rw, rh = region
    return rx <= x and ry <= y and x + w <= rx + rw and y + h <= ry + rh


def _cluster_accuracy(labels, truth):
    """Share of turns whose label maps to their true speaker (each label to the speaker of its first turn)."""
    first = {}
    hits = [label is not None and first.setdefault(label, t) == t for label, t in zip(labels, truth)]
    return sum(hits) / len(truth) if len(set(first.values())) == len(first) else 0.0


def test_detects_the_astronaut_face():
    assert fallback_warning() is None
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
    assert result.uncertain == "no face visible"


def test_both_dialogue_faces_are_detected(video):
    (frame,) = read_frames(video, [1.0])
    boxes = detect_faces(frame)
    assert len(boxes) == 2
    left, right = head_boxes()
    assert _inside(boxes[0], left) and _inside(boxes[1], right)


def test_speaker_is_the_face_whose_lips_move(video):
    results = attribute_speakers(video, TURNS)
    for turn, result in enumerate(results):
        assert result.found and result.method == "lips" and result.uncertain is None
        assert _inside(result.box, head_boxes()[turn % 2]), f"turn {turn} took the wrong face"
        assert result.confidence > 0.5
        assert result.crop.shape == (result.box[3], result.box[2], 3)
        assert result.track == turn % 2 and result.others == (1 - turn % 2,)
    # the right face is the smaller one: the speaker is not simply the largest face
    assert results[1].box[2] < results[0].box[2]
    assert cluster_speakers(results).labels == ["SPEAKER_1", "SPEAKER_2", "SPEAKER_1", "SPEAKER_2"]


def test_one_turn_gets_the_face_the_whole_video_call_gets(video):
    whole = attribute_speakers(video, TURNS)
    for turn, expected in zip(TURNS, whole):
        single = turn_face(video, *turn)
        assert single.box == expected.box and single.frame_index == expected.frame_index
        assert turn[0] < single.time_s == expected.time_s < turn[1]
        (frame,) = read_frames(video, [single.time_s])
        x, y, w, h = single.box
        np.testing.assert_array_equal(single.crop, frame[y : y + h, x : x + w])


def test_batches_under_a_small_frame_budget_keep_the_tracks(video):
    whole = attribute_speakers(video, TURNS)
    one_turn_at_a_time = attribute_speakers(video, TURNS, frame_budget_bytes=1)
    assert [(f.box, f.track) for f in one_turn_at_a_time] == [(f.box, f.track) for f in whole]


def test_long_dialogue_speakers_and_clusters(long_dialogue):
    path, turns = long_dialogue
    results = attribute_speakers(path, turns)
    truth = [i % 2 for i in range(len(turns))]
    right = [r.found and _inside(r.box, head_boxes()[t]) for r, t in zip(results, truth)]
    assert len(turns) >= 8 and sum(right) / len(turns) >= 0.9
    speakers = cluster_speakers(results)
    assert set(speakers.labels) == {"SPEAKER_1", "SPEAKER_2"} and speakers.labels[0] == "SPEAKER_1"
    assert _cluster_accuracy(speakers.labels, truth) >= 0.9


def test_voice_activity_decides_between_two_moving_mouths(video):
    """The left face moves its lips while the voice is on, the right one while it is off (a listener
    laughing in the pauses): lips alone cannot tell them apart, the voice can."""
    left_talks, right_talks = np.linspace(0.5, 1.5, 8), np.linspace(2.1, 3.1, 8)
    times = [t for pair in zip(left_talks.reshape(4, 2), right_talks.reshape(4, 2)) for t in np.concatenate(pair)]
    voice = [1.0, 1.0, 0.0, 0.0] * 4
    frames = read_frames(video, times)
    lips_only = speaker_face(frames)
    assert lips_only.uncertain == "two faces move their lips alike"
    with_voice = speaker_face(frames, voice)
    assert with_voice.method == "lips+voice" and with_voice.uncertain is None
    assert _inside(with_voice.box, head_boxes()[0])
    assert _inside(speaker_face(frames, [1 - v for v in voice]).box, head_boxes()[1])


def test_activity_is_read_at_the_sampled_times(video):
    hop = 0.02
    # voice on during the right face's turns only: in the left face's turns no voice is heard, so the
    # lips alone decide there
    probs = np.zeros(int(6.5 / hop))
    for start, end in TURNS[1::2]:
        probs[int(start / hop) : int(end / hop)] = 1.0
    results = attribute_speakers(video, TURNS, (probs, hop))
    for r in results[1::2]:
        assert r.method == "lips+voice" and r.uncertain is None and _inside(r.box, head_boxes()[1])
    for r in results[0::2]:
        assert r.method == "lips" and r.uncertain is None and _inside(r.box, head_boxes()[0])


def test_still_faces_are_flagged(video):
    pause = read_frames(video, [1.7, 1.8, 1.9])  # between turns: nobody's lips move
    still = speaker_face(pause)
    assert still.method == "largest" and _inside(still.box, head_boxes()[0])
    assert still.uncertain == "no visible face moves its lips; took the largest" and still.confidence == 0
    alone = speaker_face([frame[:, :320].copy() for frame in pause])  # only the left face in view
    assert alone.uncertain == "one face visible, its lips do not move"


def test_crop_is_the_frame_region(video):
    frames = read_frames(video, [0.6, 0.8, 1.0, 1.2, 1.4])
    result = speaker_face(frames)
    x, y, w, h = result.box
    np.testing.assert_array_equal(result.crop, frames[result.frame_index][y : y + h, x : x + w])


def test_sampling_is_bounded():
    assert [len(t) for t in sample_times([(0.0, 0.1), (0.0, 1.0), (0.0, 60.0)])] == [
        faces.MIN_FRAMES_PER_TURN, round(faces.SAMPLE_FPS), faces.MAX_FRAMES_PER_TURN]
    many = sample_times([(i, i + 3.0) for i in range(200)])
    assert sum(map(len, many)) <= max(faces.MAX_FRAMES, 200 * faces.MIN_FRAMES_PER_TURN)
    assert all(start <= t <= start + 3.0 for start, times in zip(range(200), many) for t in times)


def _face(track, others=(), look=0, box=(0, 0, 10, 10), found=True, uncertain=None):
    descriptor = np.zeros(128)
    descriptor[look] = 1.0
    return FaceResult(found=found, box=box if found else None, track=track if found else None,
                      descriptor=descriptor if found else None, others=others, uncertain=uncertain)


def test_clusters_keep_faces_seen_together_apart():
    # tracks 0 and 1 look the same and stand in the same place, but were seen in one turn together
    labels = cluster_speakers([_face(0, (1,)), _face(1, (0,)), _face(0, (1,))]).labels
    assert labels == ["SPEAKER_1", "SPEAKER_2", "SPEAKER_1"]


def test_clusters_link_broken_tracks_and_camera_cuts():
    far = (500, 0, 10, 10)
    turns = [
        _face(0),  # speaker A
        _face(1, look=5, box=far),  # speaker B elsewhere
        _face(2),  # A again after a lost track, same place and look
        _face(3, look=5, box=(200, 200, 10, 10)),  # B after a camera cut: same look, new place
        _face(4, look=9, box=far, uncertain="two faces move their lips alike"),  # a third person
        _face(None, found=False),
    ]
    speakers = cluster_speakers(turns)
    assert speakers.labels == ["SPEAKER_1", "SPEAKER_2", "SPEAKER_1", "SPEAKER_2", "SPEAKER_3", None]
    assert speakers.uncertain == [1, 3, 4, 5]  # linked by looks alone; unclear lips; no face


def test_missing_face_models_fall_back_to_haar(video, without_face_models):
    warning = fallback_warning()
    assert "Haar cascade" in warning and "mediapipe==0.10.21" in warning and "requirements-nodeps.txt" in warning
    with pytest.warns(RuntimeWarning, match="Haar cascade"):
        assert len(detect_faces(data.astronaut())) == 1
    with pytest.warns(RuntimeWarning, match="mediapipe==0.10.21"):
        results = attribute_speakers(video, TURNS)
    assert all(_inside(r.box, head_boxes()[i % 2]) for i, r in enumerate(results))


@pytest.fixture
def changed_blazeface(monkeypatch):
    model = PACKAGED["blazeface"]
    monkeypatch.setitem(PACKAGED, "blazeface", replace(model, files={name: "0" * 64 for name in model.files}))
    packaged_path.cache_clear()
    yield
    packaged_path.cache_clear()


def test_changed_model_file_is_refused_and_named(changed_blazeface):
    warning = fallback_warning()
    assert "does not match the sha256" in warning and "BlazeFace" in warning and "--no-deps" in warning
    with pytest.warns(RuntimeWarning, match="sha256"):
        assert len(detect_faces(data.astronaut())) == 1  # through the Haar cascade


def test_bad_input():
    with pytest.raises(InputError, match="RGB frame"):
        detect_faces(np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="start <= end"):
        turn_face("unused.mp4", 3.0, 2.0)
    blank = np.zeros((36, 64, 3), np.uint8)
    with pytest.raises(InputError, match="one per frame"):
        speaker_face([blank, blank], speech=[1.0])
