"""Gradio layout and callbacks. Everything here calls `backend`; nothing touches torch."""
from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from backend.analyze import analyze
from backend.errors import InputError, ModelUnavailableError
from backend.predictors import predictor_loaders
from backend.profiles import get_profile
from backend.settings import PROFILES, get_settings

TURN_COLUMNS = ["#", "start", "end", "speaker", "text", "face"]


def model_status_markdown(profile_name: str) -> str:
    """One line per model: ready, or why not (the loaders' own messages)."""
    profile, settings = get_profile(profile_name), get_settings()
    lines = [f"**Profile `{profile.name}`** — {html.escape(profile.description)}"]
    for key, loader in predictor_loaders().items():
        try:
            loader(profile, settings)
            lines.append(f"- `{key}`: ready")
        except ModelUnavailableError as exc:
            lines.append(f"- `{key}`: {html.escape(str(exc))}")
    return "\n".join(lines)


def turns_table(doc: dict) -> pd.DataFrame:
    rows = [
        [t["index"], f"{t['start']:.2f}", f"{t['end']:.2f}", t["speaker"], t["text"], "yes" if t["face"]["found"] else "no"]
        for t in doc["turns"]
    ]
    return pd.DataFrame(rows, columns=TURN_COLUMNS)


def run_analysis(video: str | None, subtitles: str | None, profile: str, progress=gr.Progress()):
    if not video:
        raise gr.Error("Upload a video first (MP4, MKV, WebM or MOV).")
    transcript = subtitles if subtitles and subtitles.lower().endswith(".csv") else None
    subtitle_file = None if transcript else subtitles
    try:
        doc = analyze(
            video, subtitles=subtitle_file, transcript=transcript, profile=profile,
            progress=lambda fraction, stage: progress(fraction, desc=stage),
        )
    except (InputError, ModelUnavailableError) as exc:
        raise gr.Error(str(exc)) from None
    warnings = "\n".join(f"- {html.escape(w)}" for w in doc["warnings"]) or "No warnings."
    return turns_table(doc), warnings, doc


def build_app() -> gr.Blocks:
    settings = get_settings()
    with gr.Blocks(title="ERC Studio — emotion recognition in conversations") as demo:
        gr.Markdown(
            "# ERC Studio\nUpload a video dialogue (and subtitles if you have them). The backend splits "
            "it into turns, takes each turn's audio and the speaker's face, and runs MiSTER-E and FARCER."
        )
        with gr.Row():
            with gr.Column(scale=1):
                video = gr.Video(label="Video dialogue", sources=["upload"])
                subtitles = gr.File(label="Subtitles (SRT/VTT) or transcript CSV (optional)",
                                    file_types=[".srt", ".vtt", ".csv"], type="filepath")
                profile = gr.Radio(list(PROFILES), value=settings.profile, label="Profile")
                run = gr.Button("Analyse", variant="primary")
                status = gr.Markdown(model_status_markdown(settings.profile))
            with gr.Column(scale=2):
                table = gr.Dataframe(headers=TURN_COLUMNS, label="Turns", interactive=False, wrap=True)
                warnings = gr.Markdown(label="Warnings")
                raw = gr.JSON(label="Analysis (erc.analysis/1)")
        profile.change(model_status_markdown, profile, status)
        run.click(run_analysis, [video, subtitles, profile], [table, warnings, raw], api_name="analyze")
    return demo
