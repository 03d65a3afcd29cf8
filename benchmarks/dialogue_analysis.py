"""The whole analysis of a generated ~60 s, two-speaker spoken dialogue, as a user runs it: without
subtitles (speech recognition, faces and speakers, both models) and with subtitles (faces, both models).

    python -m benchmarks.dialogue_analysis [--profile offline] [--threads 2] [--out FILE]

The video has two faces and two eSpeak NG voices saying plainly written lines, some of them
emotional; models are loaded once before timing (as in the running app). Prints JSON: seconds per
stage, the ratio of analysis time to video length against the targets (0.5 without subtitles, 0.25
with), and how well the subtitle-free run found the turns (word error rate, largest turn-edge error,
speakers right) and what each model said per line.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from backend.analyze import analyze
from backend.predictors import load_predictors
from backend.profiles import get_profile
from backend.settings import get_settings
from backend.synthetic_media import SpokenLine, make_spoken_dialogue_video
from backend.transcript_scoring import max_edge_error, word_error_rate

LINES = (
    (0, "Hi Sam. How was the job interview this morning?"),
    (1, "It went really well. They offered me the job on the spot!"),
    (0, "That is wonderful news, I am so happy for you."),
    (1, "Thank you. I still cannot believe it."),
    (0, "When do you start?"),
    (1, "Next Monday. The office is right by the river."),
    (0, "Oh no, I just remembered. My car was towed again this afternoon."),
    (1, "Again? That is the third time this month."),
    (0, "I am so angry about it. The sign was hidden behind a tree!"),
    (1, "You should complain to the city."),
    (0, "I will. But first I need to get the car back."),
    (1, "I can drive you there after lunch if you want."),
    (0, "That would be great, thanks."),
    (1, "No problem. Meet me outside at two."),
)
TARGETS = {"without_subtitles": 0.5, "with_subtitles": 0.25}


def _srt(truth: Sequence[SpokenLine], names: Sequence[str]) -> str:
    def clock(t: float) -> str:
        ms = round(t * 1000)
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    return "\n".join(
        f"{i + 1}\n{clock(line.start)} --> {clock(line.end)}\n{names[line.speaker]}: {line.text}\n"
        for i, line in enumerate(truth)
    )


def _speakers_right(doc: dict, truth: Sequence[SpokenLine]) -> float:
    """Share of found turns whose speaker name maps to the true speaker of the line they overlap most
    (each name mapped to the true speaker it is most often)."""
    def line_of(turn: dict) -> SpokenLine:
        return max(truth, key=lambda l: min(l.end, turn["end"]) - max(l.start, turn["start"]))

    pairs = [(t["speaker"], line_of(t).speaker) for t in doc["turns"]]
    mapping = {
        name: max({s for n, s in pairs if n == name}, key=lambda s: pairs.count((name, s)))
        for name, _ in pairs
    }
    return sum(mapping[name] == speaker for name, speaker in pairs) / max(len(pairs), 1)


def run(profile: str, workdir: Path) -> dict:
    video = workdir / "dialogue.mp4"
    truth = make_spoken_dialogue_video(video, LINES)
    subtitles = workdir / "dialogue.srt"
    subtitles.write_text(_srt(truth, ("Alex", "Sam")), encoding="utf-8")
    duration = truth[-1].end + 0.8
    settings = get_settings()
    start = time.perf_counter()
    load_predictors(get_profile(profile), settings)  # the app loads models once, at start
    load_s = time.perf_counter() - start
    analyze(video, subtitles=subtitles, profile=profile)  # warm-up: first-call costs (ASR model, caches)
    result: dict = {"video_s": round(duration, 2), "lines": len(truth), "profile": profile, "load_s": round(load_s, 2)}
    for name, kwargs in (("without_subtitles", {}), ("with_subtitles", {"subtitles": subtitles})):
        start = time.perf_counter()
        doc = analyze(video, profile=profile, **kwargs)
        seconds = time.perf_counter() - start
        found = [(t["start"], t["end"]) for t in doc["turns"]]
        result[name] = {
            "seconds": round(seconds, 2),
            "ratio": round(seconds / duration, 3),
            "target_ratio": TARGETS[name],
            "met": seconds / duration < TARGETS[name],
            "stages_s": doc["timings_s"],
            "turns": len(doc["turns"]),
            "models": {key: [t.get(key, {}).get("label") for t in doc["turns"]] for key in doc["models"]},
            "warnings": doc["warnings"],
        }
        if name == "without_subtitles":
            result[name]["word_error_rate"] = round(
                word_error_rate(" ".join(l.text for l in truth), " ".join(t["text"] for t in doc["turns"])), 4
            )
            lines = [(l.start, l.end) for l in truth]
            # None when the turn count differs from the line count (then compare the counts)
            result[name]["max_edge_error_s"] = round(max_edge_error(found, lines), 3) if len(found) == len(lines) else None
            result[name]["speakers_right"] = round(_speakers_right(doc, truth), 3)
            result[name]["found"] = [[t["speaker"], t["start"], t["end"], t["text"]] for t in doc["turns"]]
            result[name]["truth"] = [[l.speaker, round(l.start, 3), round(l.end, 3), l.text] for l in truth]
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target is for 2 cores)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.profile, Path(tmp))
    result["threads"] = args.threads
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
