"""Speech encoder inputs: pooled Whisper base states of a 20-turn dialogue, packed into 30 s windows
(what the app does) against encoding each turn alone in its own padded window.

    python -m benchmarks.speech_encoder [--turns 20] [--repeats 2]

Prints JSON: seconds per dialogue both ways, windows encoded, and the speedup of packing.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from backend.settings import get_settings
from backend.speech_encoder import SR, load_whisper_states, pack, pooled_states
from backend.synthetic_media import speech_like_audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lengths = rng.uniform(1.5, 4.5, args.turns)
    clips = [speech_like_audio([(0.0, float(n))], float(n), SR, seed=i) for i, n in enumerate(lengths)]
    states = load_whisper_states(get_settings().model_cache_dir)
    pooled_states(states, clips[:1])  # warm up

    def best_of(run) -> float:
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return min(times)

    packed = best_of(lambda: pooled_states(states, clips))
    alone = best_of(lambda: [pooled_states(states, [c]) for c in clips])
    print(json.dumps({
        "turns": args.turns,
        "audio_seconds": round(float(lengths.sum()), 1),
        "windows_packed": pack([len(c) for c in clips])[1],
        "windows_alone": args.turns,
        "packed_seconds": round(packed, 3),
        "alone_seconds": round(alone, 3),
        "speedup": round(alone / packed, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
