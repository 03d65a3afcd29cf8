"""Time the media side of an analysis on a synthetic 60 s, 15-turn dialogue video.

    python -m benchmarks.media_pipeline [--out FILE]

Prints JSON with the seconds spent probing, extracting audio (whole track + per-turn spans) and
finding the speaker's face in every turn, and whether the total stays under 10% of the video length.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from backend.faces import attribute_speakers
from backend.media import audio_span, load_audio, probe
from backend.synthetic_media import make_dialogue_video


@dataclass
class BenchConfig:
    video_s: float = 60.0
    turns: int = 15
    size: tuple[int, int] = (640, 360)
    fps: int = 25
    sr: int = 16000
    target_ratio: float = 0.1


def dialogue_turns(cfg: BenchConfig) -> list[tuple[float, float]]:
    """Evenly spaced turns filling 80% of their slot, the rest a pause."""
    slot = cfg.video_s / cfg.turns
    return [(round(i * slot + 0.1 * slot, 3), round(i * slot + 0.9 * slot, 3)) for i in range(cfg.turns)]


def run(cfg: BenchConfig) -> dict:
    turns = dialogue_turns(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.mp4"
        make_dialogue_video(path, turns, size=cfg.size, fps=cfg.fps, duration_s=cfg.video_s)
        t0 = time.perf_counter()
        info = probe(path)
        t1 = time.perf_counter()
        audio = load_audio(path, cfg.sr)
        spans = [audio_span(audio, cfg.sr, start, end) for start, end in turns]
        t2 = time.perf_counter()
        faces = attribute_speakers(path, turns)
        t3 = time.perf_counter()
    if not all(span.size for span in spans) or not all(face.found for face in faces):
        raise RuntimeError("the synthetic video lost a turn's audio or face; the media pipeline is broken")
    total = t3 - t0
    ratio = total / info.duration_s
    return {
        "video_s": round(info.duration_s, 2),
        "turns": cfg.turns,
        "probe_s": round(t1 - t0, 4),
        "audio_s": round(t2 - t1, 4),
        "faces_s": round(t3 - t2, 4),
        "total_s": round(total, 4),
        "ratio_to_video": round(ratio, 4),
        "target_ratio": cfg.target_ratio,
        "meets_target": ratio < cfg.target_ratio,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args()
    result = json.dumps(run(BenchConfig()), indent=2)
    print(result)
    if args.out:
        args.out.write_text(result + "\n")


if __name__ == "__main__":
    main()
