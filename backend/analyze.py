"""Video dialogue -> turns -> per-turn audio and faces -> both models -> `erc.analysis/1` JSON.

    python -m backend.analyze VIDEO [--subtitles FILE | --transcript CSV] [--profile NAME] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from backend.dialogue import Turn
from backend.errors import InputError, ModelUnavailableError
from backend.faces import FaceResult, attribute_speakers
from backend.media import audio_span, load_audio, probe, sha256_file
from backend.predictors import TurnInputs, TurnPredictor, load_predictors
from backend.profiles import PROFILES, Profile, get_profile
from backend import registry
from backend.schema import SCHEMA, validate_analysis
from backend.settings import Settings, get_settings
from backend.transcripts import read_subtitles, read_turns, turns_from_table, validate_turns

SAMPLE_RATE = 16_000
Progress = Callable[[float, str], None]


def no_progress(fraction: float, stage: str) -> None:
    """The default progress callback: report nothing."""


def find_turns(
    video: Path,
    audio,
    duration_s: float,
    profile: Profile,
    settings: Settings,
    subtitles: Path | None = None,
    transcript: Path | None = None,
    table: Sequence | None = None,
) -> tuple[list[Turn], list[str]]:
    """Turns from the first source given: subtitles, transcript, table, speech recognition."""
    warnings: list[str] = []
    if subtitles is not None:
        turns, source = read_subtitles(subtitles), Path(subtitles).name
    elif transcript is not None:
        turns, source = read_turns(transcript), Path(transcript).name
    elif table is not None:
        turns, source = turns_from_table(table), "the transcript table"
    elif audio is None:
        raise InputError(
            f"{video.name} has no audio track and no subtitles or transcript were given, so there is "
            "nothing to find turns in; upload subtitles (SRT/VTT) or a transcript CSV"
        )
    else:
        from backend.asr import PLACEHOLDER_SPEAKER, asr_model_for, transcribe

        model = asr_model_for(profile.asr_model, settings.asr_language)
        turns, source = transcribe(
            audio, SAMPLE_RATE, model, language=settings.asr_language, device=settings.torch_device(),
            cache_dir=settings.model_cache_dir,
        ), "speech recognition"
        if not turns:
            raise InputError(
                f"no speech was found in the audio track of {video.name} (voice activity detection heard only "
                "silence or noise), so there are no turns to analyse; check that the video has spoken dialogue, "
                "or upload subtitles (SRT/VTT) or a transcript CSV"
            )
        warnings.append(
            f"no transcript: turns and their text come from speech recognition ({model}, language "
            f"{settings.asr_language!r}; set ERC_ASR_LANGUAGE for another language) and may contain errors, "
            f"and speakers are not identified ({PLACEHOLDER_SPEAKER}); upload subtitles (SRT/VTT) or a "
            "transcript CSV, or correct the transcript table and run again"
        )
    turns, more = validate_turns(turns, duration_s, settings.max_turns, source)
    return turns, warnings + more


def _turn_faces(video: Path, turns: Sequence[Turn]) -> list[FaceResult]:
    """The speaker's face per turn (frames are decoded in memory-bounded batches inside)."""
    return attribute_speakers(video, [(turn.start, turn.end) for turn in turns])


def _face_json(face: FaceResult) -> dict:
    return {"found": face.found, "box": [int(v) for v in face.box] if face.found else None}


def analyze(
    video: str | Path,
    *,
    subtitles: str | Path | None = None,
    transcript: str | Path | None = None,
    table: Sequence | None = None,
    profile: str | None = None,
    explain: bool = False,
    settings: Settings | None = None,
    progress: Progress = no_progress,
) -> dict:
    """Analyse one video dialogue; returns a validated `erc.analysis/1` document."""
    settings = settings or get_settings()
    prof = get_profile(profile or settings.profile)
    video = Path(video)
    timings: dict[str, float] = {}

    progress(0.0, "loading models")
    t = time.perf_counter()
    predictors, warnings = load_predictors(prof, settings)
    timings["load"] = time.perf_counter() - t

    start = time.perf_counter()
    progress(0.1, "decoding")
    info = probe(video, max_bytes=int(settings.max_upload_mb * 1e6), max_duration_s=settings.max_video_s)
    sha = sha256_file(video)
    audio = load_audio(video, SAMPLE_RATE, settings.max_video_s) if info.has_audio else None
    if audio is None:
        warnings.append("the video has no audio track: speech-based experts are skipped")
    timings["media"] = time.perf_counter() - start

    progress(0.25, "turns")
    t = time.perf_counter()
    turns, more = find_turns(
        video, audio, info.duration_s, prof, settings, _path(subtitles), _path(transcript), table
    )
    warnings += more
    timings["turns"] = time.perf_counter() - t

    progress(0.4, "faces")
    t = time.perf_counter()
    faces = _turn_faces(video, turns)
    inputs = [
        TurnInputs(
            audio=None if audio is None else audio_span(audio, SAMPLE_RATE, turn.start, turn.end),
            sample_rate=SAMPLE_RATE,
            face=face.crop if face.found else None,
        )
        for turn, face in zip(turns, faces)
    ]
    timings["features"] = time.perf_counter() - t

    rows = [
        {"index": i, "speaker": turn.speaker, "start": turn.start, "end": turn.end, "text": turn.text,
         "face": _face_json(face)}
        for i, (turn, face) in enumerate(zip(turns, faces))
    ]
    for n, (key, predictor) in enumerate(predictors.items()):
        progress(0.6 + 0.35 * n / max(len(predictors), 1), registry.model_spec(key).title)
        t = time.perf_counter()
        outputs, more = predictor.predict(turns, inputs, prof.labels, explain=explain)
        warnings += more
        for row, out in zip(rows, outputs):
            row[key] = out
        timings[key] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    progress(1.0, "done")

    doc = {
        "schema": SCHEMA,
        "media": {"path": str(video), "sha256": sha, "duration_s": info.duration_s, "has_audio": info.has_audio},
        "profile": prof.name,
        "labels": list(prof.labels),
        "models": model_records(predictors),
        "turns": rows,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "warnings": warnings,
    }
    return validate_analysis(doc)


def model_records(predictors: Mapping[str, TurnPredictor]) -> dict[str, dict]:
    """The document's `models`: for each model that ran, its name, exact version and component versions."""
    return {
        key: {"name": spec.title, "model": spec.name, "version": p.version, "components": p.versions}
        for key, p in predictors.items()
        for spec in [registry.model_spec(key)]
    }


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m backend.analyze", description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--subtitles", type=Path, help="SRT or WebVTT file; 'Name: text' sets the speaker")
    source.add_argument("--transcript", type=Path, help="MELD CSV or speaker,start,end,text CSV")
    parser.add_argument("--profile", choices=PROFILES, default=None)
    parser.add_argument("--explain", action="store_true", help="include FARCER's prompt for each turn")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of printing it")
    args = parser.parse_args(argv)
    try:
        doc = analyze(args.video, subtitles=args.subtitles, transcript=args.transcript,
                      profile=args.profile, explain=args.explain)
    except (InputError, ModelUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
