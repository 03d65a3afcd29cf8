"""Gradio handlers of the Models tab: each model's versions, retraining from corrections as a background
job (progress, cancel, candidate vs active), and activating a version for new analyses."""

from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from backend.errors import InputError, ModelUnavailableError
from backend.registry import MODELS
from backend.service import Service
from ui.callbacks import user_error

VERSION_COLUMNS = ["model", "version", "name", "created", "active", "data", "validation (weighted F1)"]
POLL_S = 2.0  # how often the page asks a running job how it stands


def _data(row: dict) -> str:
    data = row["data"]
    corpus = data.get("corpus") or "-"
    corrections = data.get("corrections")
    if corrections:
        corpus += f" + {corrections['turns']} corrected turns ({', '.join(corrections['annotators']) or '?'})"
    return corpus


def versions_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            [r["model"], r["version"], r["name"], r["created_at"][:19].replace("T", " "),
             "active" if r["active"] else ("built-in" if r["builtin"] else ""), _data(r),
             " ".join(f"{k}={v}" for k, v in r["metrics"].items()) or "-"]
            for r in rows
        ],
        columns=VERSION_COLUMNS,
    )


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _score(entry: dict) -> str:
    if "error" in entry:
        return f"<i>{html.escape(entry['error'])}</i>"
    return f"{entry['weighted_f1']:.3f} (accuracy {entry['accuracy']:.3f}, n={entry['n']})"


def comparison_html(report: dict) -> str:
    """The candidate and the active version side by side, per evaluation view."""
    rows = "".join(
        f"<tr><td>{html.escape(view)}</td><td>{_score(row['candidate'])}</td><td>{_score(row['active'])}</td></tr>"
        for view, row in report["comparison"].items()
    )
    return (
        f"<table><tr><th>weighted F1 on</th><th>candidate <code>{html.escape(report['version'])}</code></th>"
        f"<th>active <code>{html.escape(report['active_version'])}</code></th></tr>{rows}</table>"
    )


def job_html(status: dict | None) -> str:
    """A retraining job as the page shows it: state, progress bar with ETA, and the comparison."""
    if status is None:
        return "<p>No retraining job yet.</p>"
    state, message = status["state"], html.escape(status["message"] or "")
    head = f"<p><b>Retraining {html.escape(status['model'] or '')}</b> (job {status['job_id']}): {state}. {message}</p>"
    if state == "running":
        fraction = status["progress"] or 0.0
        return head + (
            f"<progress max='1' value='{fraction:.3f}' style='width:100%'></progress>"
            f"<p>{fraction:.0%} of this stage, about {_clock(status['eta_s'])} left in it.</p>"
        )
    if state == "succeeded":
        return head + comparison_html(status["metrics"]) + "<p>Activate the candidate below to use it.</p>"
    return head


class Models:
    def __init__(self, service: Service) -> None:
        self.service = service

    def versions(self):
        """(the versions table, the version picker's choices for the chosen model)."""
        rows = self.service.model_versions()
        choices = [(f"{r['model']} {r['version']} ({r['name']})", f"{r['model']}:{r['version']}") for r in rows]
        return versions_table(rows), gr.Dropdown(choices=choices)

    def latest(self):
        """(the newest job's id, its view, whether the page keeps polling): also after a reload."""
        status = self.service.jobs.latest()
        running = status is not None and status["state"] == "running"
        return (status or {}).get("job_id", ""), job_html(status), gr.Timer(active=running)

    def poll(self, job_id: str):
        """(the job's view, whether to keep polling, the versions table and picker)."""
        if not job_id:
            return job_html(None), gr.Timer(active=False), *self.versions()
        status = self.service.job_status(job_id)
        return job_html(status), gr.Timer(active=status["state"] == "running"), *self.versions()

    def start(self, model: str, weight: float, epochs: float | None, profile: gr.OAuthProfile | None = None):
        """Start retraining `model`; (job id, its view, polling on). A refusal is a toast."""
        options = {"corrections_weight": weight}
        if epochs:
            options["epochs" if model == "mister-e" else "max_steps"] = int(epochs)
        try:
            job_id = self.service.retrain(model, options, profile.username if profile else None)["job_id"]
        except (InputError, ModelUnavailableError) as exc:
            raise user_error(exc) from None
        return job_id, job_html(self.service.job_status(job_id)), gr.Timer(active=True)

    def cancel(self, job_id: str, profile: gr.OAuthProfile | None = None):
        try:
            status = self.service.cancel_job(job_id, profile.username if profile else None)
        except InputError as exc:
            raise user_error(exc) from None
        return job_html(status), gr.Timer(active=False)

    def activate(self, choice: str | None, profile: gr.OAuthProfile | None = None):
        """Activate the picked `model:version`; (a message, the versions table, the picker)."""
        if not choice:
            raise user_error(InputError("pick a version to activate first"))
        model, version = choice.split(":", 1)
        try:
            done = self.service.activate_model(model, version, profile.username if profile else None)
        except (InputError, ModelUnavailableError) as exc:
            raise user_error(exc) from None
        message = f"New analyses now use {html.escape(model)} version <code>{done['version']}</code>."
        return message, *self.versions()


def model_names() -> list[str]:
    return [spec.name for spec in MODELS]
