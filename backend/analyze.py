"""Video dialogue -> turns -> per-turn audio and faces -> both models -> `erc.analysis/1` JSON.

    python -m backend.analyze VIDEO [--subtitles FILE | --transcript CSV [--dialogue ID]] [--profile NAME]
        [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.dialogue import Turn
from backend.errors import InputError, ModelUnavailableError
from backend.faces import FaceResult, attribute_speakers, cluster_speakers, fallback_warning
from backend.media import audio_span, load_audio, probe, sha256_file
from backend.predictors import TurnInputs, TurnPredictor, load_predictors
from backend.profiles import PROFILES, Profile, get_profile
from backend import registry
from backend.schema import SCHEMA, validate_analysis
from backend.settings import Settings, get_settings
from backend.speakers import speaker_turns
from backend.transcripts import read_subtitles, read_turns, turns_from_table, validate_turns
from backend.vad import voice_activity

SAMPLE_RATE = 16_000
Progress = Callable[[float, str], None]


def no_progress(fraction: float, stage: str) -> None:
    """The default progress callback: report nothing."""


@dataclass
class FoundTurns:
    turns: list[Turn]
    source: str  # where the turns came from: a file name, "the transcript table" or "speech recognition"
    warnings: list[str]
    faces: list[FaceResult] | None = None  # speaking faces, when finding the turns needed them
    uncertain: list[int] = field(default_factory=list)  # turns whose speaker (face) is doubtful


def find_turns(
    video: Path,
    audio,
    duration_s: float,
    profile: Profile,
    settings: Settings,
    subtitles: Path | None = None,
    transcript: Path | None = None,
    table: Sequence | None = None,
    activity: tuple[np.ndarray, float] | None = None,
) -> FoundTurns:
    """Turns from the first source given: subtitles, transcript, table, speech recognition. Turns from
    speech recognition get their speakers from the faces that speak them (`backend.speakers`)."""
    if subtitles is not None:
        found = FoundTurns(read_subtitles(subtitles), Path(subtitles).name, [])
    elif transcript is not None:
        found = FoundTurns(read_turns(transcript), Path(transcript).name, [])
    elif table is not None:
        found = FoundTurns(turns_from_table(table), "the transcript table", [])
    elif audio is None:
        raise InputError(
            f"{video.name} has no audio track and no subtitles or transcript were given, so there is "
            "nothing to find turns in; upload subtitles (SRT/VTT) or a transcript CSV"
        )
    else:
        found = _recognised_turns(video, audio, profile, settings, activity)
    # An edited table may keep turns without text (the text parts of the models skip them).
    untyped = found.source == "the transcript table"
    turns, more = validate_turns(found.turns, duration_s, settings.max_turns, found.source, require_text=not untyped)
    if len(turns) != len(found.turns):  # validation dropped turns: the faces no longer line up
        found.faces, found.uncertain = None, []
    found.turns, found.warnings = turns, found.warnings + more
    return found


def _recognised_turns(
    video: Path, audio, profile: Profile, settings: Settings, activity: tuple[np.ndarray, float] | None
) -> FoundTurns:
    from backend.asr import asr_model_for, recognise

    model = asr_model_for(profile.asr_model, settings.asr_language)
    words, regions = recognise(
        audio, SAMPLE_RATE, model, language=settings.asr_language, device=settings.torch_device(),
        cache_dir=settings.model_cache_dir, activity=activity,
    )
    if not words:
        raise InputError(
            f"no speech was found in the audio track of {video.name} (voice activity detection heard only "
            "silence or noise, or nothing in it was recognised as words), so there are no turns to analyse; "
            "check that the video has spoken dialogue, or upload subtitles (SRT/VTT) or a transcript CSV"
        )
    spoken = speaker_turns(video, words, regions, activity)
    warning = (
        f"no transcript: turns and their text come from speech recognition ({model}, language "
        f"{settings.asr_language!r}; set ERC_ASR_LANGUAGE for another language) and may contain errors; "
        "speakers are named by the face that speaks (SPEAKER_1, SPEAKER_2, ...). Correct the transcript table "
        "and run again, or upload subtitles (SRT/VTT) or a transcript CSV"
    )
    return FoundTurns(spoken.turns, "speech recognition", [warning], spoken.faces, spoken.uncertain)


def _uncertain_warning(turns: Sequence[int], faces: Sequence[FaceResult]) -> str | None:
    if not turns:
        return None
    reasons = sorted({faces[i].uncertain or "linked to a speaker by looks only" for i in turns})
    return (
        f"the speaker's face is uncertain in turn(s) {', '.join(str(i + 1) for i in turns)} "
        f"({'; '.join(reasons)}): check the speaker and face of these turns"
    )


def _face_json(face: FaceResult) -> dict:
    return {
        "found": face.found,
        "box": [int(v) for v in face.box] if face.found else None,
        "time_s": None if face.time_s is None else round(face.time_s, 3),
    }


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
    # The inputs are checked before the models load, so a wrong path or file is reported at once.
    info = probe(video, max_bytes=int(settings.max_upload_mb * 1e6), max_duration_s=settings.max_video_s)
    for given in (subtitles, transcript):
        if given is not None and not Path(given).is_file():
            raise InputError(f"{Path(given).name}: file not found ({given}); check the path")

    progress(0.0, "loading models")
    t = time.perf_counter()
    predictors, warnings = load_predictors(prof, settings)
    timings["load"] = time.perf_counter() - t

    start = time.perf_counter()
    progress(0.1, "decoding")
    sha = sha256_file(video)
    audio = load_audio(video, SAMPLE_RATE, settings.max_video_s) if info.has_audio else None
    if audio is None:
        warnings.append("the video has no audio track: speech-based experts are skipped")
    timings["media"] = time.perf_counter() - start

    progress(0.25, "turns")
    t = time.perf_counter()
    activity = voice_activity(audio, SAMPLE_RATE) if audio is not None else None
    found = find_turns(
        video, audio, info.duration_s, prof, settings, _path(subtitles), _path(transcript), table, activity
    )
    turns, warnings = found.turns, warnings + found.warnings
    timings["turns"] = time.perf_counter() - t

    progress(0.4, "faces")
    t = time.perf_counter()
    faces = found.faces
    if faces is None:
        faces = attribute_speakers(video, [(turn.start, turn.end) for turn in turns], activity)
        found.uncertain = cluster_speakers(faces).uncertain
    warnings += [w for w in (fallback_warning(), _uncertain_warning(found.uncertain, faces)) if w]
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
    parser.add_argument(
        "--dialogue", type=int, metavar="ID", help="the Dialogue_ID to analyse when the MELD CSV holds several"
    )
    parser.add_argument("--profile", choices=PROFILES, default=None)
    parser.add_argument("--explain", action="store_true", help="include FARCER's prompt for each turn")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of printing it")
    args = parser.parse_args(argv)
    if args.dialogue is not None and args.transcript is None:
        parser.error("--dialogue needs --transcript (a MELD CSV)")
    try:
        transcript, table = args.transcript, None
        if args.dialogue is not None:  # one dialogue of the CSV, handed over as a turn table
            turns = read_turns(args.transcript, args.dialogue)
            transcript, table = None, [[t.speaker, t.start, t.end, t.text] for t in turns]
        doc = analyze(args.video, subtitles=args.subtitles, transcript=transcript, table=table,
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
