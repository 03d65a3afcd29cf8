"""The `corpus` export: annotators' corrections as training data, a zip that `--corpus csv` and
`--corrections` read.

    corpus.csv        the generic corpus CSV (training/corpora/generic_csv.py): one row per labelled turn,
                      its current label (backend.current_label), `audio` = its clip, `face` = the face
                      crop the models saw (when one was found); and two columns the corpus loader
                      ignores: `annotators` (who labelled the turn, `;`-separated) and `labelled_at`
                      (when its deciding label was saved)
    audio/<d>_<t>.wav the turn's sound, 16 kHz mono
    faces/<d>_<t>.png the speaker's face crop
    corrections.json  {policy, turns, annotators, first, last}

A dialogue is one video (`dialogue_id` = the first 12 hex digits of its sha256), so human labels of the
same video from several analyses form one dialogue, and a training split by dialogue never puts one
video on both sides. Turns are numbered in time order.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from backend.current_label import POLICY, current_annotation
from backend.errors import InputError
from backend.media import audio_span, load_audio
from backend.turn_media import face_crop

SAMPLE_RATE = 16_000
COLUMNS = ("dialogue_id", "turn", "speaker", "text", "label", "audio", "video", "start", "end", "split",
           "face", "annotators", "labelled_at")
SUMMARY = "corrections.json"
CSV_NAME = "corpus.csv"


def video_id(media_sha256: str) -> str:
    """The corpus dialogue id of a video."""
    return media_sha256[:12]


def _png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InputError("a face crop could not be encoded as PNG")
    return data.tobytes()


def _wav(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples.astype(np.float32), SAMPLE_RATE, format="WAV")
    return out.getvalue()


def summary(turns: Sequence[Sequence[dict]]) -> dict:
    """{policy, turns, annotators, first, last} of per-turn annotation groups (oldest first)."""
    times = sorted(r["created_at"] for rows in turns for r in rows)
    return {
        "policy": POLICY,
        "turns": len(turns),
        "annotators": sorted({r["annotator"] for rows in turns for r in rows}),
        "first": times[0] if times else None,
        "last": times[-1] if times else None,
    }


def write_corpus_zip(target: Path, turns: Iterable[Sequence[dict]], document: Callable[[int], dict]) -> Path:
    """Write the corpus zip of `turns` (each a turn's annotation rows, oldest first, as
    `Store.annotations` gives them) into `target`. `document(dialogue_id)` is the stored analysis with
    `media.path` where the video is now."""
    turns = [rows for rows in turns if rows]
    if not turns:
        raise InputError("no labelled turns to export; save some labels first (or widen the filters)")
    by_video: dict[str, list[Sequence[dict]]] = {}
    for rows in turns:
        by_video.setdefault(rows[-1]["media_sha256"], []).append(rows)
    records = []
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for sha, video_turns in by_video.items():
            video_turns.sort(key=lambda rows: (rows[-1]["start"] or 0.0, rows[-1]["index"]))
            docs: dict[int, dict] = {}
            audio = None
            for number, rows in enumerate(video_turns):
                turn, decided = rows[-1], current_annotation(rows)
                if turn["dialogue_id"] not in docs:
                    docs[turn["dialogue_id"]] = document(turn["dialogue_id"])
                doc = docs[turn["dialogue_id"]]
                stem = f"{video_id(sha)}_{number}"
                clip = face = ""
                if doc["media"].get("has_audio") and turn["start"] is not None and turn["end"] is not None:
                    if audio is None:
                        audio = load_audio(doc["media"]["path"], SAMPLE_RATE)
                    clip = f"audio/{stem}.wav"
                    archive.writestr(clip, _wav(audio_span(audio, SAMPLE_RATE, turn["start"], turn["end"])))
                crop = face_crop(doc, turn["index"])
                if crop is not None and crop.size:
                    face = f"faces/{stem}.png"
                    archive.writestr(face, _png(crop))
                records.append({
                    "dialogue_id": video_id(sha), "turn": number, "speaker": turn["speaker"],
                    "text": turn["text"], "label": decided["label"], "audio": clip, "video": "",
                    "start": "" if turn["start"] is None else repr(float(turn["start"])),
                    "end": "" if turn["end"] is None else repr(float(turn["end"])), "split": "",
                    "face": face, "annotators": ";".join(sorted({r["annotator"] for r in rows})),
                    "labelled_at": decided["created_at"],
                })
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        archive.writestr(CSV_NAME, text.getvalue())
        archive.writestr(SUMMARY, json.dumps(summary(turns), indent=2) + "\n")
    return target
