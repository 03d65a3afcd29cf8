"""The app's use cases over the analysis pipeline and the store; the UI and the API call only these.

An analysis is stored with its media (under the media's hash) and found again, without running the
models, when the same media is analysed with the same profile, model versions and turn source.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from backend import exports
from backend.agreement import agreement_report
from backend.analysis_queue import AnalysisQueue
from backend.analyze import Progress, analyze, model_records, no_progress
from backend.corpus_export import write_corpus_zip
from backend.errors import InputError, ModelUnavailableError
from backend.media import probe, sha256_file
from backend.memory import return_freed_memory
from backend.model_versions import activate, version_rows
from backend.predictors import load_predictors
from backend.retrain_jobs import RetrainJobs
from backend.profiles import PROFILES, get_profile
from backend.served_files import ServedFiles
from backend.settings import Settings, get_settings
from backend.storage import Store, open_store
from backend.zerogpu import on_gpu

TRANSCRIPT_SUFFIXES = (".csv",)

# The model run of an analysis; on a ZeroGPU Space it holds a GPU for a time that fits the video.
run_models = on_gpu(analyze)


def turn_source(subtitles: str | Path | None, table: Sequence | None) -> dict:
    """What the turns come from, fingerprinted: a stored analysis is reused only for the same source."""
    if subtitles is not None:
        path = Path(subtitles)
        kind = "transcript" if path.suffix.lower() in TRANSCRIPT_SUFFIXES else "subtitles"
        return {"kind": kind, "sha256": sha256_file(path)}
    if table is not None:
        rows = table.values.tolist() if hasattr(table, "values") else [list(r) for r in table]
        text = json.dumps(rows, default=str, ensure_ascii=False)
        return {"kind": "table", "sha256": hashlib.sha256(text.encode()).hexdigest()}
    return {"kind": "media", "sha256": None}


def resolve_annotator(typed_name: str | None, username: str | None, require_login: bool) -> str:
    """Who is saving: the logged-in user when there is one, else the typed name unless login is required."""
    if username:
        return username
    if require_login:
        raise InputError("saving labels needs a Hugging Face login here; press 'Sign in with Hugging Face'")
    if not (typed_name or "").strip():
        raise InputError("annotator name is empty; enter your name or initials before saving a label")
    return typed_name.strip()


def no_model_message(profile: str, reasons: Sequence[str]) -> str:
    """Why a profile cannot analyse anything: each model's reason, and what to do."""
    return (
        f"the {profile!r} profile has no model available ({'; '.join(reasons)}); choose another profile,"
        " or install its checkpoints"
    )


def profile_availability(settings: Settings) -> dict[str, str | None]:
    """{profile: None when at least one of its models loads, else why none does}."""
    out: dict[str, str | None] = {}
    for name in PROFILES:
        ready, reasons = load_predictors(get_profile(name), settings)
        out[name] = None if ready else no_model_message(name, reasons)
    return out


def public_document(doc: dict) -> dict:
    """`doc` as API clients get it: `media.path` is null, so no server path is revealed."""
    return {**doc, "media": {**doc["media"], "path": None}}


@dataclass
class Service:
    store: Store
    settings: Settings
    queue: AnalysisQueue = field(init=False)
    served: ServedFiles = field(init=False)
    jobs: RetrainJobs = field(init=False)

    def __post_init__(self) -> None:
        self.queue = AnalysisQueue(self.settings.max_queued_analyses)
        self.served = ServedFiles(self.settings.served_dir)
        self.jobs = RetrainJobs(self.settings)

    @classmethod
    def open(cls, settings: Settings | None = None) -> "Service":
        settings = settings or get_settings()
        return cls(open_store(settings), settings)

    def close(self) -> None:
        self.store.close()

    def analyze(
        self,
        video: str | Path | None,
        subtitles: str | Path | None = None,
        table: Sequence | None = None,
        profile: str | None = None,
        progress: Progress = no_progress,
    ) -> dict:
        """Analyse and store a video, or reopen its stored analysis; the `erc.analysis/1` document plus
        `dialogue_id`, a `turn_id` per turn, `turn_source` and `reused` (True when nothing was run)."""
        if not video:
            raise InputError("no video was given; upload a video dialogue (MP4, MKV, MOV, WebM or AVI)")
        prof = get_profile(profile or self.settings.profile)
        probe(
            video, max_bytes=int(self.settings.max_upload_mb * 1e6), max_duration_s=self.settings.max_video_s
        )
        found = self.stored_analysis(video, subtitles, table, prof.name)
        if found is not None:
            progress(1.0, "reopened from the database")
            return {**self._located(found), "reused": True}
        source = turn_source(subtitles, table)
        is_transcript = source["kind"] == "transcript"

        def waiting(position: int, of: int) -> None:
            progress(0.0, f"waiting for the analysis slot: number {position} of {of} in the queue")

        with self.queue.slot(waiting):
            # The upload itself is analysed, so every check (turns, decoding) runs before anything is
            # stored and messages name the uploaded file, not its copy in the media store.
            doc = run_models(
                video,
                subtitles=None if is_transcript else subtitles,
                transcript=subtitles if is_transcript else None,
                table=table,
                profile=prof.name,
                explain=True,
                settings=self.settings,
                progress=progress,
            )
            return_freed_memory()
        media = self.store.add_media(video)
        doc["media"]["path"] = str(media.path)
        doc["media"]["name"] = Path(video).name  # the uploaded file's name, to find the analysis by
        doc["turn_source"] = source
        saved = self.store.save_analysis(doc, media.sha256, source=source["kind"])
        turns = [{**t, "turn_id": turn_id} for t, turn_id in zip(doc["turns"], saved.turn_ids, strict=True)]
        return {**doc, "dialogue_id": saved.dialogue_id, "turns": turns, "reused": False}

    def stored_analysis(
        self,
        video: str | Path,
        subtitles: str | Path | None = None,
        table: Sequence | None = None,
        profile: str | None = None,
    ) -> dict | None:
        """The stored analysis `analyze` would reopen instead of running the models: same media content,
        profile, active model versions and turn source; None when there is none. Raises
        ModelUnavailableError when the profile has no model available (nothing could be analysed)."""
        prof = get_profile(profile or self.settings.profile)
        predictors, reasons = load_predictors(prof, self.settings)
        if not predictors:  # an analysis without predictions is never run, nor stored
            raise ModelUnavailableError(no_model_message(prof.name, reasons))
        found = self.store.find_analysis(sha256_file(video), prof.name, model_records(predictors))
        return found if found is not None and found.get("turn_source") == turn_source(subtitles, table) else None

    def reopen(self, dialogue_id: int) -> dict:
        return {**self._located(self.store.analysis(dialogue_id)), "reused": True}

    def _located(self, doc: dict) -> dict:
        """A stored document with `media.path` where the media store keeps the video now."""
        path = self.store.get_media(doc["media"]["sha256"]).path
        return {**doc, "media": {**doc["media"], "path": str(path)}}

    def dialogues(self) -> list[dict]:
        return self.store.dialogues()

    def is_adjudicator(self, name: str | None) -> bool:
        """Whether `name` is one of the configured adjudicators (ERC_ADJUDICATORS)."""
        return bool(name) and name.strip() in self.settings.adjudicators

    def sees_everyone(self, viewer: str | None) -> bool:
        """Whether `viewer` may see everyone's labels: always, except to annotators in blind mode."""
        return not self.settings.blind_mode or self.is_adjudicator(viewer)

    def human_labels(self, dialogue_id: int, viewer: str | None = None) -> dict[int, str]:
        """{turn_id: label}: the current labels, or in blind mode (viewer not an adjudicator) the
        viewer's own latest labels. `viewer` None means a trusted caller that sees everything."""
        if viewer is None or self.sees_everyone(viewer):
            return self.store.current_labels(dialogue_id)
        return self.store.current_labels(dialogue_id, annotator=viewer) if viewer.strip() else {}

    def history(self, turn_id: int, viewer: str | None = None) -> list[dict]:
        """A turn's annotations, oldest first; in blind mode only the viewer's own (as `human_labels`)."""
        rows = self.store.history(turn_id)
        if viewer is None or self.sees_everyone(viewer):
            return rows
        return [r for r in rows if r["annotator"] == viewer.strip()]

    def save_correction(
        self, turn_id: int, label: str, annotator: str, note: str | None = "", request_id: str | None = None
    ) -> dict:
        """`{annotation_id, turn_id, label, annotator, note, created_at, adjudicated}`; bad input writes
        nothing. An adjudicator's save is adjudicated (the turn's final label). A repeated `request_id`
        returns the first save instead of storing another (idempotent retries)."""
        return self.store.add_annotation(
            turn_id, label, annotator, note, request_id=request_id, adjudicated=self.is_adjudicator(annotator)
        )

    def annotations(
        self,
        dialogue_id: int | None = None,
        annotator: str | None = None,
        label: str | None = None,
        viewer: str | None = None,
    ) -> list[dict]:
        """Filtered annotations (Store.annotations); in blind mode only the viewer's own."""
        if viewer is not None and not self.sees_everyone(viewer):
            if not viewer.strip():
                raise InputError(
                    "blind mode: enter your name on the annotation tab to see your own labels; everyone's"
                    " labels are shown to adjudicators only"
                )
            if annotator and annotator.strip() != viewer.strip():
                raise InputError("blind mode: you can see your own labels only; choose your own name")
            annotator = viewer
        return self.store.annotations(
            dialogue_id=dialogue_id, annotator=annotator or None, label=label or None
        )

    def agreement(
        self,
        dialogue_id: int | None = None,
        annotator: str | None = None,
        label: str | None = None,
        viewer: str | None = None,
    ) -> dict:
        rows = self.annotations(dialogue_id, annotator, label, viewer)
        return agreement_report(rows, get_profile(self.settings.profile).labels)

    def export(
        self,
        fmt: str,
        dialogue_id: int | None = None,
        annotator: str | None = None,
        label: str | None = None,
        viewer: str | None = None,
    ) -> Path:
        """Write the (filtered) corrections as `meld_csv`, `jsonl` or `corpus` (a zip of the generic
        corpus CSV with each turn's audio clip and face crop, backend.corpus_export) into the served
        folder (under a name nobody can guess); the file's path."""
        if fmt not in exports.FORMATS:
            raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(exports.FORMATS)}")
        rows = self.annotations(dialogue_id, annotator, label, viewer)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"corrections-{stamp}-{secrets.token_hex(8)}"
        if fmt == "corpus":
            turns = exports.by_turn(rows)
            return self.served.written(
                "exports", f"{name}.zip", lambda path: write_corpus_zip(path, turns, self.reopen)
            ).resolve()
        text = exports.meld_csv(rows) if fmt == "meld_csv" else exports.jsonl(rows)
        return self.served.text("exports", f"{name}.{'csv' if fmt == 'meld_csv' else 'jsonl'}", text).resolve()

    # ------------------------------------------------------------------ models: versions, retraining

    def may_manage_models(self, username: str | None) -> bool:
        """Whether `username` may retrain and activate models: anyone where no login is required, else
        only the logged-in users named in ERC_MODEL_MANAGERS (a public Space)."""
        if not self.settings.require_login:
            return True
        return bool(username) and username in self.settings.model_managers

    def _check_manager(self, username: str | None, what: str) -> None:
        if not self.may_manage_models(username):
            who = f"{username} is not" if username else "you are not signed in as"
            raise InputError(
                f"{what} is limited to the model managers here, and {who} one of them; sign in with Hugging "
                "Face as a user listed in ERC_MODEL_MANAGERS"
            )

    def model_versions(self) -> list[dict]:
        """{model, version, name, created_at, builtin, active, metrics, data} of every version (no paths)."""
        return [{k: v for k, v in row.items() if k != "path"} for row in version_rows(self.settings)]

    def activate_model(self, model: str, version: str, username: str | None = None) -> dict:
        """{model, version}: new analyses use `version` from now on, without a restart."""
        self._check_manager(username, "activating a model version")
        return activate(self.settings, model, version)

    def retrain(self, model: str, options: dict | None = None, username: str | None = None) -> dict:
        """{job_id} of a new retraining job (refused while another runs); see backend.retrain_jobs."""
        self._check_manager(username, "retraining")
        return self.jobs.start(model, options)

    def job_status(self, job_id: str) -> dict:
        return self.jobs.status(job_id)

    def cancel_job(self, job_id: str, username: str | None = None) -> dict:
        self._check_manager(username, "cancelling a retraining job")
        return self.jobs.cancel(job_id)
