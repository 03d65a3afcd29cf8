"""Turns from a bare video: word error rate, turn-edge error and speed of speech recognition on
generated two-voice eSpeak NG dialogues.

    python -m benchmarks.asr_turns [--lines tuning|held-out] [--model NAME] [--out FILE]

`tuning` is the dialogue the turn-pause threshold (backend.asr.TURN_PAUSE_S) and the voices were
chosen on; `held-out` has different lines and was not looked at while tuning (the tests use a
third set, tests/conftest.py). Each dialogue is scored twice: with speaker-change boundaries as
faces would give them (mid-gap, 0.08 s off) and with pauses alone. The expected turns are the
lines, joined across pauses shorter than the threshold unless a speaker change lies between them
(a speaker who goes on after a short pause is one turn). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from backend.analyze import SAMPLE_RATE
from backend.asr import ENGLISH_MODEL, TURN_PAUSE_S, load_asr, transcribe
from backend.media import load_audio
from backend.synthetic_media import SpokenLine, make_spoken_dialogue_video
from backend.transcript_scoring import max_edge_error, word_error_rate

LINES = {
    "tuning": (
        (0, "Did you remember to buy milk on the way home?"),
        (1, "No, I completely forgot about it."),
        (0, "That is fine, we can go together after dinner."),
        (1, "Good idea. Should we take the car?"),
        (0, "Let's walk instead, the weather is lovely tonight."),
        (1, "All right, I will get my coat."),
        (0, "Wait. Where did I leave my keys? I had them a minute ago."),
        (1, "They are on the table, next to your phone."),
    ),
    "held-out": (
        (1, "Have you finished the report for tomorrow's meeting?"),
        (0, "Almost. I still need to check the numbers in the last table."),
        (1, "Do you want me to read it before you send it?"),
        (0, "Yes please, that would help a lot."),
        (0, "I will email it to you in an hour."),
        (1, "Great. I will be in my office until six."),
        (0, "Thanks. Let's have lunch together on Friday."),
        (1, "Sounds good. I know a nice place near the station."),
        (0, "Perfect, see you then."),
    ),
}


def speaker_changes(truth: list[SpokenLine], offset: float = 0.08) -> list[float]:
    """Mid-gap times where the speaker changes, alternately `offset` early and late (faces are not exact)."""
    return [
        (a.end + b.start) / 2 + (offset if i % 2 else -offset)
        for i, (a, b) in enumerate(zip(truth, truth[1:]))
        if a.speaker != b.speaker
    ]


def expected_turns(truth: list[SpokenLine], at_speaker_changes: bool) -> list[tuple[float, float]]:
    """The turns to find: lines joined across gaps under TURN_PAUSE_S, except (with faces'
    boundaries) where the speaker changes. One speaker's lines after a short pause are one turn."""
    spans = [[truth[0].start, truth[0].end]]
    for a, b in zip(truth, truth[1:]):
        if b.start - a.end >= TURN_PAUSE_S or (at_speaker_changes and a.speaker != b.speaker):
            spans.append([b.start, b.end])
        else:
            spans[-1][1] = b.end
    return [(s, e) for s, e in spans]


def _score(turns, expected_spans, reference: str) -> dict:
    found = [(t.start, t.end) for t in turns]
    return {
        "turns": len(turns),
        "expected_turns": len(expected_spans),
        "max_edge_error_s": round(max_edge_error(found, expected_spans), 3) if len(found) == len(expected_spans) else None,
        "wer": round(word_error_rate(reference, " ".join(t.text for t in turns)), 4),
        "texts": [t.text for t in turns],
    }


def run(lines: str, model: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        video = Path(folder) / "dialogue.mp4"
        truth = make_spoken_dialogue_video(video, LINES[lines], size=(320, 180))
        audio = load_audio(video, SAMPLE_RATE)
    duration = len(audio) / SAMPLE_RATE
    reference = " ".join(line.text for line in truth)
    t = time.perf_counter()
    load_asr(model)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    with_faces = transcribe(audio, SAMPLE_RATE, model, boundaries=speaker_changes(truth))
    asr_s = time.perf_counter() - t
    pauses_only = transcribe(audio, SAMPLE_RATE, model)
    return {
        "lines": lines,
        "spoken_lines": len(truth),
        "model": model,
        "audio_s": round(duration, 2),
        "cpu_threads": len(os.sched_getaffinity(0)),
        "load_s": round(load_s, 2),
        "transcribe_s": round(asr_s, 2),
        "real_time_factor": round(asr_s / duration, 4),
        "turn_pause_s": TURN_PAUSE_S,
        "with_speaker_changes": _score(with_faces, expected_turns(truth, True), reference),
        "pauses_only": _score(pauses_only, expected_turns(truth, False), reference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", choices=sorted(LINES), default="held-out")
    parser.add_argument("--model", default=ENGLISH_MODEL)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = json.dumps(run(args.lines, args.model), indent=2)
    if args.out:
        args.out.write_text(result + "\n")
    print(result)


if __name__ == "__main__":
    main()
