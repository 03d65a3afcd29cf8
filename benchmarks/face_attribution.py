"""Time BlazeFace/FaceMesh and measure active-speaker and speaker-clustering accuracy on a synthetic
60 s two-person dialogue video (random turn lengths; turn i is spoken by face i % 2).

    python -m benchmarks.face_attribution [--out FILE]

Prints JSON: per-frame detection and landmark milliseconds, seconds to attribute every turn of the
video (with and without a voice activity curve), the share of turns given the right face and the
share whose speaker cluster matches the truth.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend import face_models
from backend.faces import attribute_speakers, cluster_speakers, sample_times
from backend.media import read_frames
from backend.synthetic_media import head_boxes, make_dialogue_video


@dataclass
class BenchConfig:
    video_s: float = 60.0
    size: tuple[int, int] = (640, 360)
    seed: int = 0
    repeats: int = 50  # model calls timed per figure


def random_turns(cfg: BenchConfig) -> list[tuple[float, float]]:
    """Turns of 0.8-5 s separated by 0.2-1 s pauses, filling the video."""
    rng = np.random.default_rng(cfg.seed)
    turns, t = [], 0.3
    while True:
        start, end = t, t + rng.uniform(0.8, 5.0)
        if end > cfg.video_s - 0.3:
            return turns
        turns.append((round(start, 2), round(end, 2)))
        t = end + rng.uniform(0.2, 1.0)


def truth_activity(turns: list[tuple[float, float]], video_s: float, hop_s: float = 0.032) -> tuple[np.ndarray, float]:
    """A voice activity curve that is 1 inside the turns and 0 between them."""
    t = np.arange(int(video_s / hop_s)) * hop_s
    probs = np.zeros(len(t))
    for start, end in turns:
        probs[(t >= start) & (t < end)] = 1.0
    return probs, hop_s


def _per_call_ms(fn, repeats: int) -> float:
    fn()  # first call builds the interpreter
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return round((time.perf_counter() - t) / repeats * 1e3, 2)


def _inside(box, region) -> bool:
    x, y, w, h = box
    rx, ry, rw, rh = region
    return rx <= x and ry <= y and x + w <= rx + rw and y + h <= ry + rh


def _scores(turns, faces, size) -> dict:
    heads = head_boxes(size)
    right = [f.found and _inside(f.box, heads[i % 2]) for i, f in enumerate(faces)]
    labels = cluster_speakers(faces).labels
    truth = {}
    same = [labels[i] is not None and truth.setdefault(labels[i], i % 2) == i % 2 for i in range(len(turns))]
    distinct = len(set(truth.values())) == len(truth)
    return {
        "active_speaker_accuracy": round(sum(right) / len(turns), 4),
        "cluster_accuracy": round(sum(same) / len(turns), 4) if distinct else 0.0,
        "speakers_found": len(truth),
        "uncertain_turns": sum(f.uncertain is not None for f in faces),
    }


def run(cfg: BenchConfig) -> dict:
    turns = random_turns(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_dialogue_video(Path(tmp) / "bench.mp4", turns, size=cfg.size, duration_s=cfg.video_s, seed=cfg.seed)
        (frame,) = read_frames(path, [turns[0][0] + 0.3])
        detections = face_models.detect(frame)
        detect_ms = _per_call_ms(lambda: face_models.detect(frame), cfg.repeats)
        landmark_ms = _per_call_ms(lambda: face_models.landmarks(frame, detections[0]), cfg.repeats)
        decode_t = time.perf_counter()
        read_frames(path, [t for ts in sample_times(turns) for t in ts])
        decode_s = time.perf_counter() - decode_t
        t = time.perf_counter()
        lips_only = attribute_speakers(path, turns)
        lips_s = time.perf_counter() - t
        t = time.perf_counter()
        with_voice = attribute_speakers(path, turns, truth_activity(turns, cfg.video_s))
        voice_s = time.perf_counter() - t
    return {
        "video_s": cfg.video_s,
        "frame_size": list(cfg.size),
        "turns": len(turns),
        "sampled_frames": sum(len(ts) for ts in sample_times(turns)),
        "faces_per_frame": len(detections),
        "detect_ms_per_frame": detect_ms,
        "landmarks_ms_per_face": landmark_ms,
        "decode_sampled_frames_s": round(decode_s, 3),
        "attribute_s_lips_only": round(lips_s, 3),
        "attribute_s_with_voice": round(voice_s, 3),
        "lips_only": _scores(turns, lips_only, cfg.size),
        "with_voice": _scores(turns, with_voice, cfg.size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = json.dumps(run(BenchConfig(seed=args.seed)), indent=2)
    print(result)
    if args.out:
        args.out.write_text(result + "\n")


if __name__ == "__main__":
    main()
