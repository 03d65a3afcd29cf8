"""Gradio handlers of the analysis side: analyse, re-run with an edited transcript, reopen, show a turn.

Handlers are bound methods (Gradio reads their type hints to inject gr.Progress and friends); their
annotations must resolve at runtime.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from backend.analysis_queue import QueueFullError
from backend.errors import InputError, ModelUnavailableError
from backend.example import write_example
from backend.predictors import model_status
from backend.profiles import get_profile
from backend import registry
from backend.service import Service
from backend.turn_media import face_crop
from ui import charts
from ui.results import (
    clock,
    model_status_html,
    predictions_vtt,
    results_table,
    teaching_html,
    turn_choices,
    warnings_html,
)

TRANSCRIPT_COLUMNS = ["speaker", "start", "end", "text"]
VIEW_COUNT = 10  # the outputs of `Analysis.views`
NOTES_AT = 3  # the position of the notes (warnings) among them


@dataclass(frozen=True)
class StageProgress:
    """The analysis' progress callback, `(fraction, stage)`, shown by a `gr.Progress`. An object, not a
    closure, so it pickles into the ZeroGPU worker that runs the models on a Space (backend.zerogpu)."""

    progress: gr.Progress

    def __call__(self, fraction: float, stage: str) -> None:
        self.progress(fraction, desc=stage)


def user_error(exc: Exception) -> gr.Error:
    """A toast for a user-facing error (the message says what to do)."""
    return gr.Error(html.escape(str(exc), quote=False))


def viewer_name(typed_name: str | None, profile: gr.OAuthProfile | None) -> str:
    """Who is looking at the page: the logged-in user, else the typed name ("" when none)."""
    return profile.username if profile else (typed_name or "").strip()


def profile_status_html(profile_name: str, service: Service) -> str:
    """Before any analysis: one line per model, ready or why not (the loaders' own messages)."""
    profile = get_profile(profile_name)
    lines = [f"<p><b>Profile {html.escape(profile.name)}</b>: {html.escape(profile.description)}</p><ul>"]
    for key, model in model_status(profile, service.settings).items():
        state = f"not available: {html.escape(model)}" if isinstance(model, str) else f"ready (version {model.version})"
        lines.append(f"<li>{registry.model_spec(key).title}: {state}</li>")
    return "".join(lines) + "</ul>"


def transcript_frame(doc: dict) -> pd.DataFrame:
    rows = [[t["speaker"], t["start"], t["end"], t["text"]] for t in doc["turns"]]
    return pd.DataFrame(rows, columns=TRANSCRIPT_COLUMNS)


TURN_SOURCES = {"media": "turns by speech recognition", "subtitles": "subtitles", "transcript": "transcript",
                "table": "edited transcript"}


def stored_label(d: dict) -> str:
    """One stored analysis as the picker lists it: file, duration, turns labelled, profile, model
    versions, turn source, id and date."""
    specs = {slot: registry.find_spec(slot) for slot in d["models"]}
    versions = ", ".join(
        f"{spec.title if spec else slot} {version}" for (slot, version), spec in zip(d["models"].items(), specs.values())
    )
    return " · ".join(
        [
            d["file_name"] or f"video {d['media_sha256'][:10]}",
            clock(d["duration_s"]),
            f"{d['annotated_turns']}/{d['turns']} turns labelled",
            d["profile"] or "?",
            versions or "no model",
            TURN_SOURCES.get(d["turn_source"] or d["source"], d["source"]),
            f"#{d['dialogue_id']} {d['created_at'][:16].replace('T', ' ')}",
        ]
    )


class Analysis:
    """Analyse, reopen and display analyses; every handler returns `views(doc)`."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def profile_status(self, profile: str) -> str:
        return profile_status_html(profile, self.service)

    def subtitle_file(self, doc: dict) -> Path:
        name = f"dialogue-{doc['dialogue_id']}.vtt"
        return self.service.served.text("subtitles", name, predictions_vtt(doc))

    def start_turn(self, doc: dict, viewer: str, wanted: str | None = None) -> int | None:
        """The turn to open on: `wanted` (from the link) when it is one, else the last turn `viewer`
        labelled in this dialogue, else the first."""
        if not doc["turns"]:
            return None
        if wanted is not None and wanted.strip().isdecimal() and int(wanted) < len(doc["turns"]):
            return int(wanted)
        if viewer:
            mine = self.service.annotations(doc["dialogue_id"], viewer)
            if mine:
                return mine[-1]["index"]
        return 0

    def views(self, doc: dict, viewer: str, wanted_turn: str | None = None) -> tuple:
        """(doc, player, status, warnings, table, gate chart, timelines, turn picker, transcript, dialogue
        id); the table's human labels are those `viewer` may see (blind mode); the picker opens on
        `start_turn`."""
        human = self.service.human_labels(doc["dialogue_id"], viewer)
        video = self.service.served.video(doc["media"]["path"])
        player = gr.Video(value=str(video), subtitles=str(self.subtitle_file(doc)))
        picker = gr.Dropdown(choices=turn_choices(doc), value=self.start_turn(doc, viewer, wanted_turn))
        return (
            doc,
            player,
            model_status_html(doc),
            warnings_html(doc),
            results_table(doc, human),
            charts.weights_chart(doc),
            charts.probability_timelines(doc),
            picker,
            transcript_frame(doc),
            doc["dialogue_id"],
        )

    def run(
        self,
        video: str | None,
        subtitles: str | None,
        profile: str,
        name: str | None,
        user: gr.OAuthProfile | None,
        progress=gr.Progress(),
    ) -> tuple:
        return self._analyze(video, subtitles, None, profile, viewer_name(name, user), progress)

    def rerun(
        self,
        doc: dict | None,
        transcript: pd.DataFrame,
        profile: str,
        name: str | None,
        user: gr.OAuthProfile | None,
        progress=gr.Progress(),
    ) -> tuple:
        if not doc:
            raise gr.Error("Analyse a video first; then edit its transcript here and run again.")
        return self._analyze(doc["media"]["path"], None, transcript, profile, viewer_name(name, user), progress)

    def _analyze(self, video, subtitles, table, profile: str, viewer: str, progress) -> tuple:
        try:
            doc = self.service.analyze(
                video,
                subtitles=subtitles,
                table=table,
                profile=profile,
                progress=StageProgress(progress),
            )
        except (InputError, ModelUnavailableError, QueueFullError) as exc:
            raise user_error(exc) from None
        return self.views(doc, viewer)

    def example(
        self, profile: str, name: str | None, user: gr.OAuthProfile | None, progress=gr.Progress()
    ) -> tuple:
        """Analyse the generated example dialogue (backend.example), written once into the data dir."""
        folder = self.service.settings.data_dir / "example"
        video, subtitles = folder / "example-dialogue.mp4", folder / "example-dialogue.srt"
        if not (video.is_file() and subtitles.is_file()):
            video, subtitles = write_example(folder)
        return self._analyze(str(video), str(subtitles), None, profile, viewer_name(name, user), progress)

    def reopen(self, dialogue_id: int | None, name: str | None, user: gr.OAuthProfile | None) -> tuple:
        if dialogue_id is None:
            raise gr.Error("Pick a stored analysis first.")
        try:
            return self.views(self.service.reopen(dialogue_id), viewer_name(name, user))
        except InputError as exc:
            raise user_error(exc) from None

    def from_link(self, name: str | None, request: gr.Request, user: gr.OAuthProfile | None) -> tuple:
        """Open `?dialogue=<id>&turn=<index>` when the page is loaded with it (a link to a stored
        analysis; without `turn`, the last turn this annotator labelled). A dialogue that cannot be
        opened leaves the page as it is, with a message in the notes."""
        dialogue_id = request.query_params.get("dialogue")
        if dialogue_id is None:
            return tuple(gr.skip() for _ in range(VIEW_COUNT))
        try:
            doc = self.service.reopen(dialogue_id)
        except InputError as exc:
            message = f"The link's dialogue could not be opened: {exc}."
            views = [gr.skip() for _ in range(VIEW_COUNT)]
            views[NOTES_AT] = f"<p class='warnings'>{html.escape(message)}</p>"
            return tuple(views)
        return self.views(doc, viewer_name(name, user), request.query_params.get("turn"))

    def stored(self) -> gr.Dropdown:
        """The picker of stored analyses, newest first, searchable by anything its entries show."""
        return gr.Dropdown(choices=[(stored_label(d), d["dialogue_id"]) for d in self.service.dialogues()], value=None)

    def turn_views(
        self, doc: dict | None, index: int | None
    ) -> tuple[go.Figure | None, np.ndarray | None, str, list | None]:
        """For the selected turn: the votes chart, the speaker's face crop, the teaching view and its
        span [start, end, index] (the page seeks the player there and marks the table's row)."""
        if not doc or index is None or not 0 <= index < len(doc["turns"]):
            return None, None, "", None
        turn = doc["turns"][index]
        span = [turn["start"], turn["end"], index] if turn["start"] is not None else None
        return charts.turn_distributions(doc, index), face_crop(doc, index), teaching_html(doc, index), span

    def pick_row(self, evt: gr.SelectData) -> int:
        """A click in the results table selects that row's turn."""
        return int(evt.index[0])
