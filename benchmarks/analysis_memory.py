"""Resident memory of one process analysing a long dialogue: before, at the peak, and after.

    python -m benchmarks.analysis_memory [--models doubles|real] [--seconds 600] [--turns 200]
                                         [--size 1280x720] [--runs 2] [--out FILE]

Generates a subtitled dialogue video, loads the models by analysing a short one, then analyses the
long one `--runs` times (each with other subtitles, so nothing is reopened) through the service, in
a thread as the app does. Prints JSON with the resident memory (MiB) with the models loaded, the
peak, and after each run. `--models doubles` uses the instant test doubles of tests/app_helpers.py
(the media side only); `--models real` the profile's models.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from backend.service import Service
from backend.settings import Settings
from backend.synthetic_media import make_dialogue_video
from tests.app_helpers import write_dialogue


def _status_mib(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith(key + ":"))


def _srt(turns: list[tuple[float, float]], tag: str) -> str:
    def clock(s: float) -> str:
        ms = round(s * 1000)
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    return "\n".join(
        f"{i + 1}\n{clock(a)} --> {clock(b)}\n{('Ann', 'Ben')[i % 2]}: line {i} of run {tag}, a few words.\n"
        for i, (a, b) in enumerate(turns)
    )


def run(models: str, seconds: float, n_turns: int, size: tuple[int, int], runs: int) -> dict:
    if models == "doubles":
        from backend import predictors
        from tests.app_helpers import FarcerDouble, MisterEDouble

        predictors.PREDICTOR_LOADERS = {
            "mister_e": lambda profile, settings: MisterEDouble(),
            "farcer": lambda profile, settings: FarcerDouble(),
        }
    slot = seconds / n_turns
    turns = [(round(i * slot + 0.1 * slot, 3), round(i * slot + 0.9 * slot, 3)) for i in range(n_turns)]
    with tempfile.TemporaryDirectory(prefix="erc-memory-") as tmp:
        folder = Path(tmp)
        video = make_dialogue_video(folder / "long.mp4", turns, size=size, fps=10, duration_s=seconds)
        service = Service.open(Settings(data_dir=folder / "data", max_turns=max(n_turns, 200)))
        service.analyze(*write_dialogue(folder))  # loads the models
        loaded = _status_mib("VmRSS")
        after, timings = [], []
        for i in range(runs):
            subtitles = folder / f"long-{i}.srt"
            subtitles.write_text(_srt(turns, str(i)), encoding="utf-8")
            start = time.perf_counter()
            worker = threading.Thread(target=service.analyze, args=(video,), kwargs={"subtitles": subtitles})
            worker.start()
            worker.join()
            timings.append(round(time.perf_counter() - start, 1))
            after.append(_status_mib("VmRSS"))
        service.close()
    return {
        "models": "test doubles (tests/app_helpers.py)" if models == "doubles" else "real",
        "video": {"seconds": seconds, "turns": n_turns, "size": list(size)},
        "rss_mib_models_loaded": loaded,
        "rss_mib_peak": _status_mib("VmHWM"),
        "rss_mib_after_each_run": after,
        "seconds_per_run": timings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", choices=("doubles", "real"), default="doubles")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    text = json.dumps(run(args.models, args.seconds, args.turns, (width, height), args.runs), indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
