"""Batch pre-annotation: analyse every video of a folder into the app's database, as the app stores an
analysis, so the Corrections tab and the stored analyses list then cover the whole collection.

    python -m backend.batch_analysis FOLDER [--profile NAME] [--subtitles-ext .srt ...] [--database URL]
        [--summary-json PATH]
    accelerate launch --num_processes N -m backend.batch_analysis FOLDER --database postgresql://...

Each video is analysed with the subtitles (or transcript CSV) of the same stem beside it, if any.
Resumable: a video whose analysis is already stored (same media content, profile, active model
versions and subtitles, as `Service.stored_analysis` decides) is skipped. Under `accelerate launch`
the pending videos are split between the processes, each on its own GPU when there are GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from accelerate.utils import gather_object

from backend.errors import InputError, ModelUnavailableError
from backend.processes import leave_process_group, process_state
from backend.profiles import PROFILES
from backend.service import TRANSCRIPT_SUFFIXES, Service
from backend.settings import Settings, get_settings

# The video types the app takes (its upload message names them); audio-only files are not dialogues.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
# Turn files backend.transcripts reads, in order of preference when a video has several.
SUBTITLE_SUFFIXES = (".srt", ".vtt", *TRANSCRIPT_SUFFIXES)

Status = Literal["pending", "analysed", "skipped", "failed"]
Report = Callable[[str], None]


@dataclass(frozen=True)
class VideoOutcome:
    """What the batch did with one video: analysed (stored now), skipped (already stored) or failed;
    pending while it waits to be analysed."""

    video: str
    status: Status
    subtitles: str | None = None
    dialogue_id: int | None = None
    reason: str | None = None  # why it failed
    seconds: float = 0.0


@dataclass(frozen=True)
class BatchSummary:
    outcomes: list[VideoOutcome]  # every video of the folder, in path order

    def of(self, status: Status) -> list[VideoOutcome]:
        return [o for o in self.outcomes if o.status == status]

    def to_json(self) -> dict:
        return {
            **{status: len(self.of(status)) for status in ("analysed", "skipped", "failed")},
            "videos": [asdict(o) for o in self.outcomes],
        }

    def text(self) -> str:
        lines = [
            f"{len(self.of('analysed'))} analysed, {len(self.of('skipped'))} skipped (already analysed with "
            f"the same model versions), {len(self.of('failed'))} failed"
        ]
        lines += [f"  failed: {o.video}: {o.reason}" for o in self.of("failed")]
        return "\n".join(lines)


def find_videos(folder: str | Path) -> list[Path]:
    """The videos directly in `folder`, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; give the folder that holds the videos")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def subtitles_beside(video: Path, suffixes: Sequence[str] = SUBTITLE_SUFFIXES) -> Path | None:
    """The first file with the video's stem and one of `suffixes` (either case) beside it, else None."""
    for suffix in suffixes:
        for candidate in (video.with_suffix(suffix.lower()), video.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


def say(line: str) -> None:
    """The default report: a line on stdout at once (a batch's log is often a pipe or a file)."""
    print(line, flush=True)


def _process_settings(settings: Settings, device: str) -> Settings:
    """This process's settings: on a GPU machine each process runs its models on its own GPU."""
    if settings.device != "auto" or not device.startswith("cuda"):
        return settings
    torch.cuda.set_device(device)  # code that says plain "cuda" means this process's GPU too
    return settings.model_copy(update={"device": device})


def _check(service: Service, video: Path, suffixes: Sequence[str], profile: str | None) -> VideoOutcome:
    """`skipped` with its dialogue when the video's analysis is stored already, else `pending`."""
    subtitles = subtitles_beside(video, suffixes)
    try:
        stored = service.stored_analysis(video, subtitles, profile=profile)
    except (InputError, OSError):  # an unreadable file: analysing it says what is wrong
        stored = None
    status, dialogue_id = ("pending", None) if stored is None else ("skipped", stored["dialogue_id"])
    named = None if subtitles is None else str(subtitles)
    return VideoOutcome(str(video), status, subtitles=named, dialogue_id=dialogue_id)


def _analyse(service: Service, pending: VideoOutcome, profile: str | None) -> VideoOutcome:
    start = time.perf_counter()
    try:
        doc = service.analyze(pending.video, subtitles=pending.subtitles, profile=profile)
    except Exception as exc:  # noqa: BLE001
        # One bad video (unreadable, no audio and no subtitles, broken subtitles, a decoder failure)
        # must not end a batch of thousands. Service.analyze stores nothing until the analysis is
        # complete, and then stores it in one transaction, so a failure leaves no partial analysis.
        told = isinstance(exc, (InputError, ModelUnavailableError))  # their messages say what to do
        reason = str(exc) if told else f"{type(exc).__name__}: {exc}"
        return replace(pending, status="failed", reason=reason, seconds=round(time.perf_counter() - start, 3))
    return replace(
        pending,
        status="skipped" if doc["reused"] else "analysed",  # skipped: the same content stored meanwhile
        dialogue_id=doc["dialogue_id"],
        seconds=round(time.perf_counter() - start, 3),
    )


def analyse_folder(
    folder: str | Path,
    *,
    profile: str | None = None,
    subtitle_suffixes: Sequence[str] = SUBTITLE_SUFFIXES,
    settings: Settings | None = None,
    report: Report = say,
) -> BatchSummary:
    """Analyse and store every video of `folder` not stored yet; in an `accelerate launch` run, this
    process's share of them. Every process returns the whole batch's summary. Raises InputError for a
    bad folder or a SQLite database shared by several processes, ModelUnavailableError when the profile
    has no model available."""
    settings = settings or get_settings()
    state = process_state()
    if state.num_processes > 1 and settings.resolved_database_url.startswith("sqlite"):
        raise InputError(
            f"{state.num_processes} processes cannot share a SQLite database; give a PostgreSQL URL with "
            "--database (or ERC_DATABASE_URL), or run one process"
        )
    videos = find_videos(folder)
    settings = _process_settings(settings, str(state.device))
    with state.main_process_first():  # the first process to open the database creates its tables
        service = Service.open(settings)
    try:
        # Each process looks up its share of the folder (hashing every video is the slow part), then
        # all of them get the whole list, so they split the same pending videos.
        with state.split_between_processes(videos) as share:
            checked = [_check(service, video, subtitle_suffixes, profile) for video in share]
        if state.num_processes > 1:
            checked = gather_object(checked)
        done = [o for o in checked if o.status == "skipped"]
        pending = sorted((o for o in checked if o.status == "pending"), key=lambda o: o.video)
        if state.is_main_process:
            by = f" by {state.num_processes} processes" if state.num_processes > 1 else ""
            todo = f"{len(done)} already analysed, {len(pending)} to analyse{by}"
            report(f"{len(videos)} videos in {folder}: {todo}")
        outcomes = []
        with state.split_between_processes(pending) as mine:
            who = f"[process {state.process_index}] " if state.num_processes > 1 else ""
            for n, waiting in enumerate(mine, 1):
                outcome = _analyse(service, waiting, profile)
                detail = outcome.reason if outcome.status == "failed" else f"dialogue {outcome.dialogue_id}"
                where = f"{who}[{n}/{len(mine)}] {Path(outcome.video).name}"
                report(f"{where}: {outcome.status} ({detail}; {outcome.seconds:.1f} s)")
                outcomes.append(outcome)
        if state.num_processes > 1:
            outcomes = gather_object(outcomes)
    finally:
        service.close()
    return BatchSummary(sorted(done + outcomes, key=lambda o: o.video))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(
        prog="python -m backend.batch_analysis",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="Several processes: accelerate launch --num_processes N -m backend.batch_analysis FOLDER "
        "--database postgresql+psycopg://... (one process per GPU; SQLite serves one process only). The "
        "media store is ERC_DATA_DIR/media: on several machines, a folder they all mount. Exit status: 0 "
        "when the batch ran to the end (videos that failed are listed in the summary), 2 when it could "
        "not run.",
    )
    parser.add_argument(
        "folder", type=Path, help=f"the folder whose videos ({' '.join(VIDEO_SUFFIXES)}) are analysed"
    )
    parser.add_argument(
        "--profile", choices=PROFILES, default=None, help="model profile (default: ERC_PROFILE)"
    )
    parser.add_argument(
        "--subtitles-ext", nargs="+", default=list(SUBTITLE_SUFFIXES), metavar="EXT",
        help="turn files looked for beside each video (same stem), first found wins (default: %(default)s)",
    )
    parser.add_argument(
        "--database", metavar="URL",
        help="database URL (default: ERC_DATABASE_URL, else SQLite in ERC_DATA_DIR); PostgreSQL when "
        "several processes share it",
    )
    parser.add_argument(
        "--summary-json", type=Path, metavar="PATH", help="also write the summary here as JSON"
    )
    args = parser.parse_args(argv)
    suffixes = [s if s.startswith(".") else f".{s}" for s in args.subtitles_ext]
    settings = get_settings()
    if args.database:
        settings = settings.model_copy(update={"database_url": args.database})
    try:
        summary = analyse_folder(
            args.folder, profile=args.profile, subtitle_suffixes=suffixes, settings=settings
        )
    except (InputError, ModelUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if process_state().is_main_process:
        print(summary.text())
        if args.summary_json:
            args.summary_json.write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    leave_process_group()
    # Failed videos are a result, not a crash: a nonzero status would make `accelerate launch` report
    # every process as failed; --summary-json tells them to scripts.
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
