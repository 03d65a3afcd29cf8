"""Gradio handlers of annotation: step through turns, pick and save labels, show a turn's history.

Keyboard (SHORTCUTS; not while typing in a field, not on a focused button, a held key does not repeat):
1-7 pick a label, j/k next/previous turn, u the next unlabelled turn, m the unlabelled turn that teaches
the models most (backend.label_order), Enter saves, Shift+Enter saves and goes to the next turn, Space
plays the selected turn, ? shows the shortcuts.
"""

from __future__ import annotations

import html
import json

import gradio as gr
import pandas as pd

from backend.errors import InputError
from backend.label_order import teaching_order
from backend.service import Service, resolve_annotator
from ui.callbacks import user_error, viewer_name
from backend import registry
from ui.results import results_table

LABEL_ID, SAVE_ID, NEXT_ID, PREV_ID = "label-choice", "save-label", "next-turn", "prev-turn"
LABEL_TURN_ID, SAVE_NEXT_ID, UNLABELLED_ID = "label-turn", "save-next", "next-unlabelled"
TEACHING_ID = "next-teaching"
PLAYER_ID, HELP_ID, TABLE_ID = "turn-player", "shortcuts-help", "results-table"
SHORTCUTS = [
    ("1-7", "pick a label"),
    ("j / k", "next / previous turn"),
    ("u", "next turn without a label"),
    ("m", "the unlabelled turn the models disagree on or are least sure of"),
    ("Enter", "save the label"),
    ("Shift+Enter", "save the label and go to the next turn"),
    ("Space", "play the selected turn"),
    ("?", "show or hide these shortcuts (Esc hides them)"),
]
SAVED_TOAST_S = 2  # short, and the page shows only the newest toast (CSS in ui.layout)


def shortcuts_html() -> str:
    rows = "".join(f"<tr><td><kbd>{html.escape(k)}</kbd></td><td>{html.escape(what)}</td></tr>" for k, what in SHORTCUTS)
    return f"<table class='shortcuts'>{rows}</table>"


HOTKEYS_JS = f"""
<script>
const ercHelp = () => {{
  let help = document.getElementById("{HELP_ID}");
  if (!help) {{
    help = document.createElement("div");
    help.id = "{HELP_ID}";
    help.setAttribute("role", "dialog");
    help.innerHTML = "<h3>Keyboard shortcuts</h3>" + {json.dumps(shortcuts_html())};
    help.hidden = true;
    help.addEventListener("click", () => {{ help.hidden = true; }});
    document.body.appendChild(help);
  }}
  return help;
}};
// Space plays the selected turn from its start and stops at its end (SEEK_JS keeps the turn's span).
const ercPlayTurn = () => {{
  const video = document.querySelector("#{PLAYER_ID} video");
  if (!video || !window.ercTurnSpan) return false;
  const [start, end] = window.ercTurnSpan;
  video.currentTime = start;
  video.ercStopAt = end;
  video.play();
  return true;
}};
document.addEventListener("timeupdate", (event) => {{
  const video = event.target;
  if (video.ercStopAt !== undefined && video.currentTime >= video.ercStopAt) {{
    video.pause();
    video.ercStopAt = undefined;
  }}
}}, true);
document.addEventListener("keydown", (event) => {{
  const target = event.target;
  const field = ["INPUT", "TEXTAREA", "SELECT"].includes(target && target.tagName);
  const typing = target && (target.isContentEditable || field)
    && !(target.tagName === "INPUT" && target.type === "radio");
  if (typing || event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
  const click = (selector) => {{
    const element = document.querySelector(selector);
    if (element) {{ element.click(); event.preventDefault(); }}
  }};
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  // Enter or Space on a focused button or link keeps its own meaning (e.g. "Accept MiSTER-E's label").
  const onControl = target && target.closest && target.closest("button, a[href], video");
  if (/^[1-9]$/.test(key)) {{
    const options = document.querySelectorAll("#{LABEL_ID} input[type=radio]");
    const option = options[Number(key) - 1];
    if (option) {{ option.click(); event.preventDefault(); }}
  }} else if (key === "j") click("#{NEXT_ID}");
  else if (key === "k") click("#{PREV_ID}");
  else if (key === "u") click("#{UNLABELLED_ID}");
  else if (key === "m") click("#{TEACHING_ID}");
  else if (key === "?") {{ const help = ercHelp(); help.hidden = !help.hidden; event.preventDefault(); }}
  else if (key === "Escape") ercHelp().hidden = true;
  else if (key === " " && !onControl) {{ if (ercPlayTurn()) event.preventDefault(); }}
  else if (key === "Enter" && !onControl) click(event.shiftKey ? "#{SAVE_NEXT_ID}" : "#{SAVE_ID}");
}});
</script>
"""


# Runs in the page when a turn is selected (its span: [start, end, index]): the player pauses at the
# turn's start, and the results table marks the turn's row and scrolls it into its own view (not the
# page's). The table draws only the rows in view, so the mark is a style rule, not a class on a row.
SELECTED_ROW_COLOUR = "#fff3c4"
SEEK_JS = f"""(span) => {{
  window.ercTurnSpan = span;
  if (!span) return;
  const video = document.querySelector("#{PLAYER_ID} video");
  if (video) {{
    video.pause();
    video.ercStopAt = undefined;
    video.currentTime = span[0];
  }}
  let style = document.getElementById("erc-selected-row");
  if (!style) {{
    style = document.createElement("style");
    style.id = "erc-selected-row";
    document.head.appendChild(style);
  }}
  const row = `#{TABLE_ID} .virtual-row[data-index="${{span[2]}}"]`;
  style.textContent = `${{row}} > * {{ background: {SELECTED_ROW_COLOUR} !important; font-weight: 600; }}`;
  const viewport = document.querySelector("#{TABLE_ID} .virtual-table-viewport");
  const drawn = document.querySelector("#{TABLE_ID} .virtual-row");
  if (viewport && drawn) {{
    const height = drawn.offsetHeight, top = span[2] * height;
    if (top < viewport.scrollTop || top + height > viewport.scrollTop + viewport.clientHeight)
      viewport.scrollTop = Math.max(0, top - viewport.clientHeight / 2);
  }}
}}"""


def role_html(service: Service, viewer: str) -> str:
    """One line on what this viewer sees and what their saves mean."""
    if service.is_adjudicator(viewer):
        return "<p class='role'>Adjudicator: you see everyone's labels; your label is the turn's final one.</p>"
    if service.settings.blind_mode:
        return (
            "<p class='role'>Blind labelling: you see the models' suggestions and your own labels only.</p>"
        )
    return ""


def history_html(rows: list[dict], role: str = "") -> str:
    """A turn's labels, oldest first (adjudicated ones marked), after the viewer's `role` line."""
    if not rows:
        return role + "<p>No human label yet.</p>"
    items = "".join(
        f"<li>{html.escape(r['created_at'][:19].replace('T', ' '))} · <b>{html.escape(r['label'])}</b> by "
        f"{html.escape(r['annotator'])}{' (adjudicated)' if r.get('adjudicated') else ''}"
        f"{' — ' + html.escape(r['note']) if r['note'] else ''}</li>"
        for r in rows
    )
    return f"{role}<ol class='history'>{items}</ol>"


class Annotate:
    def __init__(self, service: Service) -> None:
        self.service = service

    def turn_state(
        self, doc: dict | None, index: int | None, name: str | None, profile: gr.OAuthProfile | None
    ) -> tuple[str, str | None, int | None]:
        """(history, the label to preselect, and the id of the turn they belong to). The page sends
        that id back with each save: the label picker and the id change together, so a save can tell
        which turn its label was shown for.

        The label preselected is the turn's human label as this viewer may see it (in blind mode their
        own latest, else the current label), else the first model's in registry order."""
        if not doc or index is None or not 0 <= index < len(doc["turns"]):
            return "", None, None
        viewer = viewer_name(name, profile)
        turn = doc["turns"][index]
        rows = self.service.history(turn["turn_id"], viewer)
        human = self.service.human_labels(doc["dialogue_id"], viewer).get(turn["turn_id"])
        model_labels = [turn[spec.key]["label"] for spec in registry.MODELS if spec.key in turn]
        shown = human or next(iter(model_labels), None)
        return history_html(rows, role_html(self.service, viewer)), shown, turn["turn_id"]

    def viewer_changed(
        self, doc: dict | None, index: int | None, name: str | None, profile: gr.OAuthProfile | None
    ) -> tuple:
        """After the name changes: the turn's panel and the table's human labels as this viewer sees them."""
        if not doc:
            return "", None, None, gr.skip()
        viewer = viewer_name(name, profile)
        table = results_table(doc, self.service.human_labels(doc["dialogue_id"], viewer))
        return (*self.turn_state(doc, index, name, profile), table)

    def next_unlabelled(
        self, doc: dict | None, index: int | None, name: str | None, profile: gr.OAuthProfile | None
    ) -> int | None:
        """The next turn after `index` (wrapping around) without a label this viewer can see."""
        if not doc or not doc["turns"]:
            return gr.skip()
        labelled = self.service.human_labels(doc["dialogue_id"], viewer_name(name, profile))
        count, here = len(doc["turns"]), index or 0
        for step in range(1, count + 1):
            turn = doc["turns"][(here + step) % count]
            if turn["turn_id"] not in labelled:
                return turn["index"]
        gr.Info("Every turn has a label.", duration=SAVED_TOAST_S)
        return gr.skip()

    def next_teaching(
        self, doc: dict | None, index: int | None, name: str | None, profile: gr.OAuthProfile | None
    ) -> int | None:
        """The unlabelled turn (other than the selected one) the models disagree on or are least sure of."""
        if not doc or not doc["turns"]:
            return gr.skip()
        labelled = self.service.human_labels(doc["dialogue_id"], viewer_name(name, profile))
        order = [i for i in teaching_order(doc, labelled) if i != index]
        if not order:
            gr.Info("Every other turn has a label.", duration=SAVED_TOAST_S)
            return gr.skip()
        return order[0]

    def step(self, doc: dict | None, index: int | None, delta: int) -> int | None:
        if not doc or not doc["turns"]:
            return None
        return min(max((index or 0) + delta, 0), len(doc["turns"]) - 1)

    def next(self, doc: dict | None, index: int | None) -> int | None:
        return self.step(doc, index, 1)

    def previous(self, doc: dict | None, index: int | None) -> int | None:
        return self.step(doc, index, -1)

    def save(
        self,
        doc: dict | None,
        index: int | None,
        shown_turn_id: float | None,
        label: str | None,
        note: str,
        name: str,
        profile: gr.OAuthProfile | None,
    ) -> tuple:
        """Save `label` for the selected turn; (history, refreshed results table, cleared note).

        `shown_turn_id` is the turn the label picker was showing when the save was sent: right after a
        move to another turn the picker still holds the previous turn's label for a moment, and a save
        then would put that label on the new turn, so it is refused with a warning, nothing is written
        and the outputs are left as they are."""
        if not doc or index is None or not 0 <= index < len(doc["turns"]):
            raise gr.Error("Analyse a video and select a turn before saving a label.")
        if not label:
            raise gr.Error("Pick a label first (keys 1-7).")
        turn = doc["turns"][index]
        if shown_turn_id is None or int(shown_turn_id) != turn["turn_id"]:
            # A warning, not an error: the panel stays as it is and fills in with the turn's own label.
            gr.Warning(
                f"Not saved: turn {turn['index']} was still loading, so the label shown was not its own; "
                "check the label and save again."
            )
            return gr.skip(), gr.skip(), gr.skip()
        try:
            annotator = resolve_annotator(
                name, profile.username if profile else None, self.service.settings.require_login
            )
            self.service.save_correction(turn["turn_id"], label, annotator, note)
        except InputError as exc:
            raise user_error(exc) from None
        gr.Info(f"Saved {label} for turn {turn['index']}.", duration=SAVED_TOAST_S)
        human = self.service.human_labels(doc["dialogue_id"], annotator)
        rows = self.service.history(turn["turn_id"], annotator)
        return history_html(rows, role_html(self.service, annotator)), results_table(doc, human), ""

    def save_and_next(
        self,
        doc: dict | None,
        index: int | None,
        shown_turn_id: float | None,
        label: str | None,
        note: str,
        name: str,
        profile: gr.OAuthProfile | None,
    ) -> tuple:
        """`save`, then the next turn for the picker (unless the save was refused)."""
        saved = self.save(doc, index, shown_turn_id, label, note, name, profile)
        refused = saved[0] == gr.skip()
        return (*saved, gr.skip() if refused else self.next(doc, index))

    def accept(
        self,
        doc: dict | None,
        index: int | None,
        key: str,
        note: str,
        name: str,
        profile: gr.OAuthProfile | None,
    ) -> tuple[str, pd.DataFrame, str, str]:
        """Save a model's label as the human label; also returns it for the label picker."""
        if not doc or index is None:
            raise gr.Error("Analyse a video and select a turn first.")
        pred = doc["turns"][index].get(key)
        if pred is None:
            raise gr.Error(f"{registry.model_spec(key).title} has no label for this turn (not available).")
        turn_id = doc["turns"][index]["turn_id"]  # the model's label of the selected turn, never stale
        return (*self.save(doc, index, turn_id, pred["label"], note, name, profile), pred["label"])

    def accept_handler(self, key: str):
        """The click handler of the "Accept <model>'s label" button of model `key` (a plain function
        with annotations, so that Gradio injects the OAuth profile)."""

        def accept(
            doc: dict | None, index: int | None, note: str, name: str, profile: gr.OAuthProfile | None
        ) -> tuple[str, pd.DataFrame, str, str]:
            return self.accept(doc, index, key, note, name, profile)

        return accept
