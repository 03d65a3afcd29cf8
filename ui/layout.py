"""The page and its public API: Analyse (compare both models per turn, annotate) and Corrections.

Named endpoints: /analyze, /save_correction, /export_corrections, /model_versions, /retrain, /job_status,
/cancel_job, /activate_model. The page's own events are private.
"""

from __future__ import annotations

import importlib.util
import os

import gradio as gr

from backend import exports
from backend.analysis_queue import QueueFullError
from backend.errors import InputError, ModelUnavailableError
from backend.profiles import PROFILES, get_profile
from backend import registry
from backend.service import Service, profile_availability, public_document, resolve_annotator
from backend.settings import Settings, get_settings, on_spaces
from ui.annotate import (
    HOTKEYS_JS,
    LABEL_ID,
    LABEL_TURN_ID,
    NEXT_ID,
    PLAYER_ID,
    PREV_ID,
    SAVE_ID,
    SAVE_NEXT_ID,
    SEEK_JS,
    TABLE_ID,
    TEACHING_ID,
    UNLABELLED_ID,
    Annotate,
)
from ui.callbacks import TRANSCRIPT_COLUMNS, Analysis, StageProgress, profile_status_html
from ui.corrections import CORRECTION_COLUMNS, Corrections
from ui.models import POLL_S, VERSION_COLUMNS, Models, model_names
from ui.results import TABLE_TEXT_CHARS, table_columns, table_widths

TITLE = "ERC Studio — emotion recognition in conversations"
# Analyses reach the service at once: its bounded queue runs one at a time (a model run uses all the
# CPU it gets), tells the waiting their position and refuses when full (backend.analysis_queue).
INFERENCE_CONCURRENCY = None
DEFAULT_CONCURRENCY = 8  # everything else (saving, exports) runs side by side
# Gradio's uploads and its copies of served files: deleted every 10 min once 2 h old, and at shutdown.
UPLOAD_CACHE = (600, 7200)
PRIVATE = {"api_visibility": "private"}
CSS = f"""
.image-slot {{ background: #ffe08a; border-radius: 3px; padding: 0 2px; font-weight: bold; }}
.prompt {{ white-space: pre-wrap; max-height: 24em; overflow: auto; font-size: 0.85em; }}
.teaching table, .teach {{ border-collapse: collapse; }} .teach td, .teach th {{ padding: 2px 8px; }}
/* Headers of the results table never break inside a word ("MiSTER -E"). */
#{TABLE_ID} th {{ white-space: nowrap; }}
#{TABLE_ID} .body-cell, #{TABLE_ID} th {{ font-size: 13px; }}
/* Toasts: only the newest shows, at the bottom, so they do not pile up over the charts. */
.toast-wrap {{ top: auto !important; bottom: var(--size-3); }}
.toast-wrap > :not(:last-child) {{ display: none; }}
#shortcuts-help {{ position: fixed; top: 15%; left: 50%; transform: translateX(-50%); z-index: 1000;
  background: white; color: black; border: 1px solid #888; border-radius: 8px; padding: 1em 1.5em;
  box-shadow: 0 8px 30px rgba(0, 0, 0, .3); }}
#shortcuts-help td {{ padding: 2px 10px; }}
"""
# System fonts only: the default theme would fetch web fonts from Google when the page opens.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)


# Runs in the page: puts ?dialogue=<id>&turn=<index> in the address without reloading.
ADDRESS_JS = """(dialogue, turn) => {
  const url = new URL(window.location.href);
  if (dialogue === null || dialogue === undefined) return;
  url.searchParams.set("dialogue", String(dialogue));
  if (turn === null || turn === undefined) url.searchParams.delete("turn");
  else url.searchParams.set("turn", String(turn));
  window.history.replaceState(null, "", url);
}"""


SAME_VALUE_JS = "(value) => value ?? ''"  # copies a value between components, in the page

def profile_choices(service: Service) -> dict:
    """The profile picker's `choices` and `info`: a profile with no model available is marked
    unavailable, with the reason (analysing with it is refused with the same message)."""
    unavailable = {name: why for name, why in profile_availability(service.settings).items() if why}
    choices = [(f"{name} (unavailable)" if name in unavailable else name, name) for name in PROFILES]
    info = " ".join(f"Unavailable: {why}." for why in unavailable.values()) or None
    return {"choices": choices, "info": info}


def spaces_problem() -> str | None:
    """Why the app cannot start in Spaces mode (its Hugging Face login needs gradio's OAuth extra),
    or None."""
    if not on_spaces():
        return None
    missing = [name for name in ("authlib", "itsdangerous") if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"Spaces mode (SPACE_ID or ERC_SPACES_PREVIEW is set) signs annotators in with Hugging Face, which"
            f" needs {' and '.join(missing)}: install gradio[oauth] (requirements.txt: gradio[oauth]=={gr.__version__})"
        )
    if not os.environ.get("SPACE_ID"):
        from huggingface_hub import get_token

        if get_token() is None:  # outside a Space gradio signs in as the local token's user
            return (
                "the Spaces preview (ERC_SPACES_PREVIEW=1) signs you in as the user of your local Hugging Face "
                "token, and there is none: run `huggingface-cli login` (or set HF_TOKEN) once with network "
                "access, or start without ERC_SPACES_PREVIEW"
            )
    return None


def launch_options(settings: Settings | None = None) -> dict:
    """Keyword arguments for `demo.launch`: upload limit, served paths, hotkeys, theme, no SSR."""
    settings = settings or get_settings()
    return {
        "max_file_size": int(settings.max_upload_mb * 1e6),  # bytes, as the service counts them
        # Only the served folder: never the database, the media store or anything else of the data dir.
        "allowed_paths": [str(settings.served_dir.resolve())],
        "head": HOTKEYS_JS,
        "css": CSS,
        "theme": THEME,
        "ssr_mode": False,
    }


def api_error(exc: Exception) -> gr.Error:
    """An API error: the message as it is (clients get text, not a page that renders HTML)."""
    return gr.Error(str(exc))


def _api(service: Service, demo: gr.Blocks) -> None:
    """The named endpoints, on hidden components, each returning plain JSON or a file."""

    def analyze(
        video: str | None, subtitles: str | None, profile: str | None, progress=gr.Progress()
    ) -> dict:
        """The `erc.analysis/1` document plus `dialogue_id` and a `turn_id` on every turn."""
        try:
            doc = service.analyze(
                video,
                subtitles=subtitles or None,
                profile=profile or None,
                progress=StageProgress(progress),
            )
            return public_document(doc)
        except (InputError, ModelUnavailableError, QueueFullError) as exc:
            raise api_error(exc) from None

    def save_correction(
        turn_id: int,
        label: str,
        annotator: str,
        note: str | None,
        request_profile: gr.OAuthProfile | None,
        request_id: str | None = None,
    ) -> dict:
        """{annotation_id, turn_id, label, annotator, note, created_at}; bad input writes nothing. A
        repeated `request_id` returns the first save (a retry after a lost reply stores nothing new)."""
        try:
            name = resolve_annotator(
                annotator,
                request_profile.username if request_profile else None,
                service.settings.require_login,
            )
            return service.save_correction(turn_id, label, name, note, request_id=request_id or None)
        except InputError as exc:
            raise api_error(exc) from None

    def export_corrections(format: str) -> str:
        """All corrections as `meld_csv`, `jsonl` or `corpus` (a zip that `python -m training` reads)."""
        try:
            return str(service.export(format))
        except InputError as exc:
            raise api_error(exc) from None

    def model_versions() -> list[dict]:
        """[{model, version, name, created_at, builtin, active, metrics, data}] for every model version."""
        return service.model_versions()

    def retrain(model: str, options: dict | None, request_profile: gr.OAuthProfile | None) -> dict:
        """{job_id}: retrain `model` (mister-e or farcer) from the corrections in the background; `options`
        may set corrections_weight, epochs, max_steps, seed. Refused while another job runs."""
        try:
            return service.retrain(model, options or None, request_profile.username if request_profile else None)
        except (InputError, ModelUnavailableError) as exc:
            raise api_error(exc) from None

    def job_status(job_id: str) -> dict:
        """{job_id, model, state, progress, eta_s, message, version, metrics, started_at} of a retraining job."""
        try:
            return service.job_status(job_id)
        except InputError as exc:
            raise api_error(exc) from None

    def cancel_job(job_id: str, request_profile: gr.OAuthProfile | None) -> dict:
        """Stop a running retraining job; its status."""
        try:
            return service.cancel_job(job_id, request_profile.username if request_profile else None)
        except InputError as exc:
            raise api_error(exc) from None

    def activate_model(model: str, version: str, request_profile: gr.OAuthProfile | None) -> dict:
        """{model, version}: new analyses use this version from now on."""
        try:
            return service.activate_model(model, version, request_profile.username if request_profile else None)
        except (InputError, ModelUnavailableError) as exc:
            raise api_error(exc) from None

    with gr.Column(visible=False):
        model, version, job_id, options = gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.JSON()
        versions, job, activated = gr.JSON(), gr.JSON(), gr.JSON()
        listing, retraining, checking, cancelling, activating = (gr.Button() for _ in range(5))
    listing.click(model_versions, None, versions, api_name="model_versions")
    retraining.click(retrain, [model, options], job, api_name="retrain")
    checking.click(job_status, job_id, job, api_name="job_status")
    cancelling.click(cancel_job, job_id, job, api_name="cancel_job")
    activating.click(activate_model, [model, version], activated, api_name="activate_model")

    with gr.Column(visible=False):
        video, subtitles, profile = gr.File(type="filepath"), gr.File(type="filepath"), gr.Textbox()
        # No precision: the id reaches the store as sent (precision=0 would round 1.5 to turn 2), and
        # the store refuses anything but a whole number in range.
        turn_id = gr.Number()
        label, annotator, note, request_id = gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.Textbox()
        fmt = gr.Textbox()
        doc, saved, exported = gr.JSON(), gr.JSON(), gr.File()
        run, save, export = gr.Button(), gr.Button(), gr.Button()
    run.click(
        analyze,
        [video, subtitles, profile],
        doc,
        api_name="analyze",
        concurrency_id="inference",
        concurrency_limit=INFERENCE_CONCURRENCY,
    )
    save.click(
        save_correction, [turn_id, label, annotator, note, request_id], saved, api_name="save_correction"
    )
    export.click(export_corrections, fmt, exported, api_name="export_corrections")


def build_app(service: Service | None = None) -> gr.Blocks:
    """The Gradio app over `service` (by default the store configured by `backend.settings`)."""
    service = service or Service.open()
    settings = service.settings
    analysis, annotate, corrections = Analysis(service), Annotate(service), Corrections(service)
    models = Models(service)
    labels = list(get_profile(settings.profile).labels)

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=UPLOAD_CACHE) as demo:
        doc = gr.State(None)
        dialogue_id = gr.Number(visible=False, elem_id="dialogue-id")  # for the page's address
        remembered_name = gr.BrowserState("", storage_key="erc-studio-annotator")
        gr.Markdown(
            "# ERC Studio\nUpload a video dialogue (and subtitles or a transcript if you have them). The "
            "turns are labelled by "
            + " and ".join(f"**{spec.title}** ({spec.summary})" for spec in registry.MODELS)
            + "; correct the labels below."
        )
        with gr.Tab("Analyse and annotate"):
            # Upload | the player | the labelling panel, side by side: the selected turn is labelled
            # while its video is in view.
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=260):
                    video = gr.Video(label="Video dialogue", sources=["upload"])
                    subtitles = gr.File(
                        label="Subtitles (SRT/VTT) or transcript CSV (optional)",
                        file_types=[".srt", ".vtt", ".csv"],
                        type="filepath",
                    )
                    profile = gr.Radio(**profile_choices(service), value=settings.profile, label="Profile")
                    run = gr.Button("Analyse", variant="primary")
                    example = gr.Button("Try an example (a generated 6 s dialogue)", size="sm")
                    with gr.Accordion("Stored analyses", open=False):
                        stored = gr.Dropdown(
                            label="Reopen without recomputing (type to search: file, profile, version…)",
                            choices=[],
                            filterable=True,
                        )
                        reopen = gr.Button("Reopen")
                    status = gr.HTML(profile_status_html(settings.profile, service), elem_id="model-status")
                with gr.Column(scale=2, min_width=400):
                    player = gr.Video(
                        label="Video with the predictions as subtitles", interactive=False, elem_id=PLAYER_ID
                    )
                    notes = gr.HTML(elem_id="analysis-notes")
                with gr.Column(scale=1, min_width=300, elem_id="labelling-panel"):
                    turn = gr.Dropdown(label="Selected turn", choices=[], elem_id="turn-picker")
                    with gr.Row():
                        prev_turn = gr.Button("◀ previous (k)", elem_id=PREV_ID, size="sm")
                        next_turn = gr.Button("next (j) ▶", elem_id=NEXT_ID, size="sm")
                        unlabelled = gr.Button("unlabelled (u) ▶▶", elem_id=UNLABELLED_ID, size="sm")
                        teaching_next = gr.Button("teaches most (m) ▶▶", elem_id=TEACHING_ID, size="sm")
                    label = gr.Radio(labels, label="Label (1-7)", elem_id=LABEL_ID)
                    # The turn the label picker is showing; updated together with the picker.
                    label_turn = gr.Number(visible=False, elem_id=LABEL_TURN_ID)
                    # The selected turn's [start, end, index]: the page seeks the player to it.
                    span = gr.JSON(visible=False)
                    note = gr.Textbox(label="Note (optional)", max_lines=3)
                    if on_spaces():
                        gr.LoginButton()
                    name = gr.Textbox(label="Your name", visible=not on_spaces(), max_length=64)
                    if settings.require_login:
                        gr.Markdown("Saving labels needs a Hugging Face login.")
                    with gr.Row():
                        save = gr.Button("Save (Enter)", variant="primary", elem_id=SAVE_ID, size="sm")
                        save_next = gr.Button("Save, next (Shift+Enter)", elem_id=SAVE_NEXT_ID, size="sm")
                    with gr.Row():
                        accepts = {
                            spec.key: gr.Button(f"Accept {spec.title}'s label", size="sm") for spec in registry.MODELS
                        }
                    history = gr.HTML(label="History")
                    gr.Markdown("Press **?** for the keyboard shortcuts.")
            table = gr.Dataframe(
                headers=table_columns(),
                label="Turns (click a row to select it; click a cell for its full text)",
                interactive=False,
                wrap=False,
                max_chars=TABLE_TEXT_CHARS,
                column_widths=table_widths(),
                elem_id=TABLE_ID,
            )
            with gr.Row():
                face = gr.Image(label="Speaker's face crop (what the models saw)", interactive=False, height=220)
                votes = gr.Plot(label="Each model's distribution for this turn")
            teaching = gr.HTML(elem_id="teaching-view")
            with gr.Row():
                gate = gr.Plot(label="Weights per turn")
                timelines = gr.Plot(label="Label probabilities over turns")
            with gr.Accordion("Transcript: edit it and run again", open=False):
                transcript = gr.Dataframe(headers=TRANSCRIPT_COLUMNS, interactive=True, label="Transcript")
                rerun = gr.Button("Run again with this transcript")

        with gr.Tab("Corrections"):
            with gr.Row():
                dialogue_filter = gr.Dropdown(label="Video (dialogue)", choices=[])
                annotator_filter = gr.Dropdown(label="Annotator", choices=[])
                label_filter = gr.Dropdown(label="Label", choices=labels, value=None)
                refresh = gr.Button("Show")
            corrections_table = gr.Dataframe(headers=CORRECTION_COLUMNS, interactive=False, wrap=True)
            agreement = gr.HTML()
            with gr.Row():
                pair_pick = gr.Dropdown(label="Annotator pair for the matrix", choices=[])
                model_pick = gr.Dropdown(label="Model for the matrix", choices=[])
            with gr.Row():
                pair_confusion = gr.Plot(label="Annotator pair")
                model_confusion = gr.Plot(label="Model vs humans")
            with gr.Row():
                fmt = gr.Radio(list(exports.FORMATS), value="meld_csv", label="Export format")
                export = gr.Button("Export")
                exported = gr.File(label="Export file")

        with gr.Tab("Models"):
            gr.Markdown(
                "Every version of each model; **Retrain from corrections** trains a candidate on the corpus "
                "plus the saved corrections in the background (one job at a time), then compares it with the "
                "active version. **Activate** switches the version new analyses use."
                + (" Retraining and activating need a Hugging Face login as one of the model managers."
                   if settings.require_login else "")
            )
            versions_view = gr.Dataframe(headers=VERSION_COLUMNS, interactive=False, wrap=True, label="Versions")
            with gr.Row():
                retrain_model = gr.Radio(model_names(), value=model_names()[0], label="Model")
                weight = gr.Number(value=1.0, minimum=0.1, label="Corrections weight (times per epoch)")
                epochs = gr.Number(value=None, precision=0, label="Epochs (MiSTER-E) or steps (FARCER); empty: as set up")
            with gr.Row():
                retrain_button = gr.Button("Retrain from corrections", variant="primary")
                cancel_button = gr.Button("Cancel the job")
            job_state = gr.Textbox(visible=False)
            job_view = gr.HTML()
            with gr.Row():
                version_pick = gr.Dropdown(label="Version", choices=[])
                activate_button = gr.Button("Activate")
            activated_note = gr.HTML()
            job_timer = gr.Timer(POLL_S, active=False)

        _api(service, demo)

        views = [doc, player, status, notes, table, gate, timelines, turn, transcript, dialogue_id]
        selected = [votes, face, teaching, span]
        annotation = [history, label, label_turn]
        filters = [dialogue_filter, annotator_filter, label_filter]
        # One progress bar (and one error mark) beside the player, not one over each of the outputs;
        # the other outputs keep showing what they showed (also the edited transcript after an error).
        inference = {
            "concurrency_id": "inference",
            "concurrency_limit": INFERENCE_CONCURRENCY,
            "show_progress_on": notes,
            **PRIVATE,
        }

        # New annotators and dialogues appear in the Corrections filters as soon as they are saved.
        refresh_filters = (corrections.filters, filters[:2], filters[:2])
        run.click(analysis.run, [video, subtitles, profile, name], views, **inference).then(
            analysis.stored, None, stored, **PRIVATE
        ).then(*refresh_filters, **PRIVATE)
        example.click(analysis.example, [profile, name], views, **inference).then(
            analysis.stored, None, stored, **PRIVATE
        ).then(*refresh_filters, **PRIVATE)
        rerun.click(analysis.rerun, [doc, transcript, profile, name], views, **inference).then(
            analysis.stored, None, stored, **PRIVATE
        ).then(*refresh_filters, **PRIVATE)
        reopen.click(analysis.reopen, [stored, name], views, show_progress_on=notes, **PRIVATE)
        profile.change(analysis.profile_status, profile, status, **PRIVATE)
        turn.change(analysis.turn_views, [doc, turn], selected, queue=False, **PRIVATE).then(
            annotate.turn_state, [doc, turn, name], annotation, queue=False, **PRIVATE
        )
        gr.on(
            [name.blur, name.submit],
            annotate.viewer_changed,
            [doc, turn, name],
            [*annotation, table],
            queue=False,
            **PRIVATE,
        )
        span.change(None, span, None, js=SEEK_JS, **PRIVATE)
        table.select(analysis.pick_row, None, turn, **PRIVATE)
        unlabelled.click(annotate.next_unlabelled, [doc, turn, name], turn, **PRIVATE)
        teaching_next.click(annotate.next_teaching, [doc, turn, name], turn, **PRIVATE)
        next_turn.click(annotate.next, [doc, turn], turn, **PRIVATE)
        prev_turn.click(annotate.previous, [doc, turn], turn, **PRIVATE)
        # A save pressed while the previous one is still finishing runs after it (Gradio's default
        # "once" would drop it, and a fast annotator's Enter would be lost without a word).
        queued = {**PRIVATE, "trigger_mode": "always_last"}
        save.click(annotate.save, [doc, turn, label_turn, label, note, name], [history, table, note], **queued).then(
            *refresh_filters, **PRIVATE
        )
        save_next.click(
            annotate.save_and_next, [doc, turn, label_turn, label, note, name], [history, table, note, turn], **queued
        ).then(*refresh_filters, **PRIVATE)
        for key, button in accepts.items():
            button.click(
                annotate.accept_handler(key), [doc, turn, note, name], [history, table, note, label], **queued
            ).then(*refresh_filters, **PRIVATE)
        gr.on(
            [refresh.click, pair_pick.input, model_pick.input],
            corrections.show,
            [*filters, pair_pick, model_pick, name],
            [corrections_table, agreement, pair_confusion, model_confusion, pair_pick, model_pick],
            **PRIVATE,
        )
        export.click(corrections.export, [fmt, *filters, name], exported, **PRIVATE)
        # Light events skip the queue: they answer at once, also in headless browsers (virtual time).
        # The name typed last time in this browser comes back first: the link opens at their last turn.
        demo.load(None, remembered_name, name, js=SAME_VALUE_JS, **PRIVATE).then(
            analysis.from_link, name, views, queue=False, show_progress_on=notes, **PRIVATE
        )
        name.change(None, name, remembered_name, js=SAME_VALUE_JS, **PRIVATE)
        # The address follows the dialogue and turn shown, so a reload or a shared link opens them.
        turn.change(None, [dialogue_id, turn], None, js=ADDRESS_JS, **PRIVATE)
        demo.load(analysis.stored, None, stored, queue=False, **PRIVATE)
        demo.load(corrections.filters, None, [dialogue_filter, annotator_filter], queue=False, **PRIVATE)
        # A running job is found again after a reload; the timer polls it until it ends.
        demo.load(models.versions, None, [versions_view, version_pick], queue=False, **PRIVATE)
        demo.load(models.latest, None, [job_state, job_view, job_timer], queue=False, **PRIVATE)
        job_timer.tick(models.poll, job_state, [job_view, job_timer, versions_view, version_pick], **PRIVATE)
        retrain_button.click(models.start, [retrain_model, weight, epochs], [job_state, job_view, job_timer], **PRIVATE)
        cancel_button.click(models.cancel, job_state, [job_view, job_timer], **PRIVATE)
        activate_button.click(
            models.activate, version_pick, [activated_note, versions_view, version_pick], **PRIVATE
        ).then(analysis.profile_status, profile, status, **PRIVATE)
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY)
    return demo
