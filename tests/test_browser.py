"""The page in real headless Chromium: both models' results for a generated video, and the annotation
hotkeys pressed as real key events (plus a video uploaded through the page).

The screenshot is kept as test-artifacts/browser-analysis.png.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from backend.labels import MELD7
from backend.media import sha256_file
from backend.settings import REPO_ROOT
from backend.synthetic_media import make_spoken_dialogue_video
from tests.app_helpers import FarcerDouble, MisterEDouble, install, write_dialogue
from tests.cdp import CDP, chromium_session
from tests.conftest import SPOKEN_LINES
from tests.test_api import RunningApp, free_port

T = TypeVar("T")
ARTIFACTS = REPO_ROOT / "test-artifacts"
EVIL_NOTE = "<img src=x onerror=alert(1)>"
HEADLESS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
]
# One-shot dumps and screenshots: the page gets 20 s of virtual time to load and settle.
SNAPSHOT = [*HEADLESS, "--virtual-time-budget=20000"]
ANNOTATOR = "Kim Tester"
# key -> (DOM code, Windows virtual key code), as a US keyboard sends them.
KEYS = {
    "j": ("KeyJ", 74),
    "k": ("KeyK", 75),
    "u": ("KeyU", 85),
    "Enter": ("Enter", 13),
    " ": ("Space", 32),
    "?": ("Slash", 191),
    "Escape": ("Escape", 27),
} | {str(n): (f"Digit{n}", 48 + n) for n in range(1, 8)}
SHIFT = 8  # CDP's modifier bit
BUSY = (
    "[...document.querySelectorAll('[data-testid=status-tracker]')].some(e => !e.classList.contains('hide'))"
)
SELECTION = f"""({{
  turn: document.querySelector('#turn-picker input')?.value ?? '',
  label: document.querySelector('#label-choice input:checked')?.value ?? null,
  busy: {BUSY},
}})"""

# Watches the turn picker and presses "Save label" the moment turn 1 is selected (what an annotator's
# Enter right after `j` does); records the turn it pressed on.
SAVE_ON_NEXT_TURN = """(() => {
  window.savedOnTurn = null;
  const tick = () => {
    const turn = document.querySelector('#turn-picker input').value;
    if (turn.startsWith('1 · ')) {
      document.querySelector('#save-label').click();
      window.savedOnTurn = turn.split(' ')[0];
    } else setTimeout(tick, 2);
  };
  tick();
})()"""


@pytest.fixture
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("no headless Chromium found (`apt-get install -y chromium`; .ci/run installs it)")


@pytest.fixture
def served(tmp_path, monkeypatch) -> Iterator[tuple[RunningApp, dict, Path]]:
    """The app with the model doubles, serving a stored analysis of a generated video:
    (app, the analysis, the video)."""
    install(monkeypatch, MisterEDouble(), FarcerDouble())
    video, subtitles = write_dialogue(tmp_path)
    app = RunningApp(tmp_path / "data")
    try:
        yield app, app.service.analyze(video, subtitles=subtitles), video
    finally:
        app.close()


def browse(binary: str, url: str, *args: str) -> str:
    done = subprocess.run([binary, *SNAPSHOT, *args, url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _text(dom: str, element_id: str) -> str:
    """The visible text inside the element with `element_id` (tags dropped)."""
    start = dom.index(f'id="{element_id}"')
    return re.sub(r"<[^>]+>", " ", dom[start : start + 60_000])


def wait_until(check: Callable[[], T], what: str, limit_s: float = 30) -> T:
    """Poll `check` until it returns something truthy; that value."""
    deadline = time.monotonic() + limit_s
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {limit_s} s waiting for {what}")
        time.sleep(0.1)
    return value


def press(cdp: CDP, key: str, held: bool = False, shift: bool = False) -> None:
    """A trusted key press (down, then up) through the browser's input pipeline; `held` sends it as
    the auto-repeat of a key held down, `shift` with Shift down ("?" is Shift+Slash)."""
    code, virtual = KEYS[key]
    modifiers = SHIFT if shift or key == "?" else 0
    event = {"key": key, "code": code, "windowsVirtualKeyCode": virtual, "modifiers": modifiers}
    text = {"Enter": "\r", "Escape": ""}.get(key, key)
    cdp.call("Input.dispatchKeyEvent", type="keyDown", text=text, autoRepeat=held, **event)
    cdp.call("Input.dispatchKeyEvent", type="keyUp", **event)


def field(label: str) -> str:
    """JS for the text field under the visible label `label`."""
    return (
        f"[...document.querySelectorAll('label')].find(l => l.innerText.trim().startsWith({json.dumps(label)}))"
        ".querySelector('textarea, input')"
    )


def button(text: str) -> str:
    """JS for the button whose visible text is `text`."""
    return f"[...document.querySelectorAll('button')].find(b => b.innerText.trim() === {json.dumps(text)})"


def shows(cdp: CDP, index: int, label: str) -> None:
    """Wait until the page has turn `index` selected, `label` picked and no event running."""
    wait_until(
        lambda: (
            (s := cdp.evaluate(SELECTION))["turn"].startswith(f"{index} · ")
            and s["label"] == label
            and not s["busy"]
        ),
        f"turn {index} selected with {label} picked",
    )


def label_with_keys(cdp: CDP, move: str, index: int, preselected: str, digit: str) -> None:
    """Press `move` (j/k), wait for turn `index` with its `preselected` label, press `digit` and Enter."""
    press(cdp, move)
    shows(cdp, index, preselected)
    press(cdp, digit)
    press(cdp, "Enter")


def upload_and_analyse(cdp: CDP, video: Path) -> None:
    """Put `video` in the page's video upload, press Analyse and wait for the new analysis' notes."""
    chooser = cdp.call(
        "Runtime.evaluate", expression="document.querySelector('input[type=file][accept*=video]')"
    )
    cdp.call("DOM.setFileInputFiles", files=[str(video)], objectId=chooser["result"]["objectId"])
    wait_until(
        lambda: cdp.evaluate(f"!!document.querySelector('video[src$={json.dumps('/' + video.name)}]')"),
        "the uploaded video in its player",
    )
    cdp.evaluate(f"{button('Analyse')}.click()")
    wait_until(
        lambda: cdp.evaluate(
            f"document.querySelector('#analysis-notes').innerText.includes('Analysed now') && !{BUSY}"
        ),
        "the analysis of the uploaded video",
    )


def labelled(app: RunningApp, turn_id: int) -> list[tuple[str, str]]:
    """(label, annotator) of a turn's annotations once it has any (polled)."""
    rows = wait_until(lambda: app.service.history(turn_id), f"an annotation of turn {turn_id}")
    return [(r["label"], r["annotator"]) for r in rows]


def test_page_shows_both_models_for_a_generated_video(chromium, served):
    app, doc, _ = served
    app.service.save_correction(doc["turns"][0]["turn_id"], "joy", "ann", EVIL_NOTE)
    url = f"{app.url}/?dialogue={doc['dialogue_id']}"
    dom = browse(chromium, url, "--dump-dom")
    track = re.search(r'<track kind="captions"[^>]* src="([^"]+)"', dom)
    assert track, "the player has the predictions as a subtitle track"
    captions = urllib.request.urlopen(html.unescape(track[1]), timeout=30).read().decode()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-analysis.png"
    shot.unlink(missing_ok=True)
    browse(chromium, url, "--window-size=1400,2600", f"--screenshot={shot}")

    status = _text(dom, "model-status")
    assert "MiSTER-E : version test-1" in status and "FARCER : version test-1" in status
    table = " ".join(_text(dom, "results-table").split())
    for turn in doc["turns"]:
        assert turn["text"].replace("&", "&amp;") in table
    row = lambda i: re.escape(doc["turns"][i]["text"])  # noqa: E731
    assert re.search(row(1) + r" joy 0\.505 0\.50/0\.20/0\.30 anger 0\.6 no", table), table[:3000]
    assert re.search(row(2) + r" surprise 0\.505 0\.50/0\.20/0\.30 fear 0\.6 no", table)
    assert captions.startswith("WEBVTT") and "MiSTER-E surprise 50% · FARCER fear 60%" in captions
    teaching = _text(dom, "teaching-view")
    assert "Past labels used" in teaching and "[face image]" in teaching
    assert "onerror=alert(1)" in dom and '<img src="x"' not in dom and "<img src=x" not in dom, (
        "the note is shown as text, not markup"
    )
    assert Path(shot).stat().st_size > 10_000


def test_hotkeys_label_turns_and_an_uploaded_video_is_analysed(chromium, served, tmp_path):
    app, doc, video = served
    turn_ids = [t["turn_id"] for t in doc["turns"]]
    preselected = [t["mister_e"]["label"] for t in doc["turns"]]
    second, third = MELD7[1], MELD7[2]  # what keys 2 and 3 pick: joy, surprise
    assert preselected[:2] != [second, third], "the keys must change the preselected labels"
    with chromium_session(chromium, HEADLESS, free_port(), tmp_path / "chromium") as cdp:
        cdp.call("Page.navigate", url=f"{app.url}/?dialogue={doc['dialogue_id']}")
        last_text = json.dumps(doc["turns"][-1]["text"])
        wait_until(
            lambda: cdp.evaluate(
                f"document.querySelector('#results-table')?.innerText.includes({last_text})"
            ),
            "the results table",
        )
        shows(cdp, 0, preselected[0])
        cdp.evaluate(f"{field('Your name')}.focus()")
        cdp.call("Input.insertText", text=ANNOTATOR)
        cdp.evaluate("document.activeElement.blur()")

        label_with_keys(cdp, "j", 1, preselected[1], "3")
        assert labelled(app, turn_ids[1]) == [(third, ANNOTATOR)]
        label_with_keys(cdp, "k", 0, preselected[0], "2")
        assert labelled(app, turn_ids[0]) == [(second, ANNOTATOR)]
        saved = json.dumps(f"{second} by {ANNOTATOR}")
        wait_until(
            lambda: cdp.evaluate(f"document.body.innerText.includes({saved}) && !{BUSY}"),
            "the saved label in the turn's history",
        )

        cdp.evaluate(f"{field('Note (optional)')}.focus()")
        press(cdp, "1")
        press(cdp, "Enter")
        time.sleep(1.5)  # nothing to poll for: the assertion is that no save happens
        assert len(app.service.annotations()) == 2, "Enter in the note saved a label"
        assert cdp.evaluate(SELECTION)["label"] == second, "1 in the note picked a label"
        assert cdp.evaluate(f"{field('Note (optional)')}.value") == "1", "the key was typed into the note"

        cdp.evaluate("document.activeElement.blur()")
        press(cdp, "Enter", held=True)
        time.sleep(1.5)  # as above: a held Enter must not save again and again
        assert len(app.service.annotations()) == 2, "a held Enter saved"
        farcer_label = doc["turns"][0]["farcer"]["label"]
        assert farcer_label != second, "the accept button must save something other than the picked label"
        cdp.evaluate(button("Accept FARCER's label") + ".focus()")
        press(cdp, "Enter")  # on a focused button Enter presses that button, not "Save label"
        wait_until(lambda: len(app.service.history(turn_ids[0])) == 2, "the accepted FARCER label")
        time.sleep(1.0)
        assert [r["label"] for r in app.service.history(turn_ids[0])] == [second, farcer_label]

        # Save the moment turn 1 is selected, before its label reaches the picker (which still shows
        # turn 0's label): that save must not put turn 0's label on turn 1.
        cdp.evaluate(SAVE_ON_NEXT_TURN)
        press(cdp, "j")
        assert wait_until(lambda: cdp.evaluate("window.savedOnTurn"), "the save on the new turn") == "1"
        shows(cdp, 1, third)
        time.sleep(1.0)  # a stale save would have landed by now
        assert [r["label"] for r in app.service.history(turn_ids[1])] == [third], "a stale label was saved"
        assert cdp.evaluate("document.body.innerText.includes('was still loading')"), "no message"

        # A video without subtitles: its turns come from speech recognition and the speaking faces.
        spoken = tmp_path / "spoken.mp4"
        make_spoken_dialogue_video(spoken, SPOKEN_LINES[:2], size=(320, 180))
        upload_and_analyse(cdp, spoken)
    newest = app.service.dialogues()[0]
    assert newest["dialogue_id"] != doc["dialogue_id"] and newest["source"] == "media"
    assert newest["media_sha256"] == sha256_file(spoken) and newest["turns"] == 2


def test_the_address_keeps_the_dialogue_and_turn_and_the_name_is_remembered(chromium, served, tmp_path):
    app, doc, _ = served
    turn_ids = [t["turn_id"] for t in doc["turns"]]
    preselected = [t["mister_e"]["label"] for t in doc["turns"]]
    with chromium_session(chromium, HEADLESS, free_port(), tmp_path / "chromium") as cdp:
        cdp.call("Page.navigate", url=f"{app.url}/?dialogue={doc['dialogue_id']}")
        shows(cdp, 0, preselected[0])
        cdp.evaluate(f"{field('Your name')}.focus()")
        cdp.call("Input.insertText", text=ANNOTATOR)
        cdp.evaluate("document.activeElement.blur()")
        label_with_keys(cdp, "j", 1, preselected[1], "3")
        assert labelled(app, turn_ids[1]) == [(MELD7[2], ANNOTATOR)]
        wait_until(lambda: cdp.evaluate("location.search").endswith("turn=1"), "turn=1 in the address")
        assert cdp.evaluate("location.search") == f"?dialogue={doc['dialogue_id']}&turn=1"
        press(cdp, "j")
        wait_until(lambda: cdp.evaluate("location.search").endswith("turn=2"), "turn=2 in the address")

        # A reload without the turn: the name comes back and the page opens on the last labelled turn.
        cdp.call("Page.navigate", url=f"{app.url}/?dialogue={doc['dialogue_id']}")
        shows(cdp, 1, MELD7[2])
        assert cdp.evaluate(f"{field('Your name')}.value") == ANNOTATOR

        cdp.call("Page.navigate", url=f"{app.url}/?dialogue=987654")
        wait_until(
            lambda: cdp.evaluate(
                "document.querySelector('#analysis-notes')?.innerText.includes('could not be opened')"
            ),
            "the message about the link",
        )
        time.sleep(1.0)
        badges = cdp.evaluate(
            "[...document.querySelectorAll('span, div')].filter(e => e.innerText?.trim() === 'Error').length"
        )
        assert badges == 0, "error badges over the page's components"


PLAYER = "document.querySelector('#turn-player video')"
TOASTS = (
    "[...document.querySelectorAll('.toast-wrap > *')].filter(e => getComputedStyle(e).display !== 'none').length"
)
# Any part of the results table that scrolls sideways (its content wider than its box).
SIDEWAYS = (
    "[...document.querySelectorAll('#results-table *')].filter(e => e.scrollWidth > e.clientWidth + 1"
    " && ['auto', 'scroll'].includes(getComputedStyle(e).overflowX)).length"
)


def test_keyboard_flow_player_and_table_follow_the_selected_turn(chromium, served, tmp_path):
    app, doc, _ = served
    turn_ids = [t["turn_id"] for t in doc["turns"]]
    preselected = [t["mister_e"]["label"] for t in doc["turns"]]
    flags = [*HEADLESS, "--window-size=1400,1000", "--autoplay-policy=no-user-gesture-required"]
    with chromium_session(chromium, flags, free_port(), tmp_path / "chromium") as cdp:
        cdp.call("Page.navigate", url=f"{app.url}/?dialogue={doc['dialogue_id']}")
        shows(cdp, 0, preselected[0])
        assert cdp.evaluate(SIDEWAYS) == 0, "the results table scrolls sideways at 1400 px"
        heights = cdp.evaluate(
            "[...document.querySelectorAll('#results-table th')].map(th => th.getBoundingClientRect().height)"
        )
        assert len(set(round(h) for h in heights)) == 1, f"a header wraps: {heights}"
        cdp.evaluate(f"{field('Your name')}.focus()")
        cdp.call("Input.insertText", text=ANNOTATOR)
        cdp.evaluate("document.activeElement.blur()")

        # Shift+Enter saves and moves on; the player seeks to the new turn; the table marks its row.
        press(cdp, "2")
        press(cdp, "Enter", shift=True)
        shows(cdp, 1, preselected[1])
        assert labelled(app, turn_ids[0]) == [(MELD7[1], ANNOTATOR)]
        wait_until(lambda: abs(cdp.evaluate(f"{PLAYER}.currentTime") - 2.0) < 0.05, "the player at turn 1")
        marked = (
            "[...document.querySelectorAll('#results-table .virtual-row')].filter(r => getComputedStyle("
            "r.querySelector('.body-cell')).backgroundColor === 'rgb(255, 243, 196)').map(r => r.dataset.index)"
        )
        wait_until(lambda: cdp.evaluate(marked) == ["1"], "turn 1's row marked in the table, and no other")

        # u: the next turn without a label (turn 2); Space plays it and stops at its end.
        press(cdp, "u")
        shows(cdp, 2, preselected[2])
        wait_until(lambda: abs(cdp.evaluate(f"{PLAYER}.currentTime") - 4.0) < 0.05, "the player at turn 2")
        press(cdp, " ")
        wait_until(lambda: cdp.evaluate(f"{PLAYER}.currentTime") > 4.2, "the turn playing")
        wait_until(lambda: cdp.evaluate(f"{PLAYER}.paused"), "the player stopping at the turn's end", 20)
        assert 5.1 <= cdp.evaluate(f"{PLAYER}.currentTime") < 5.8

        press(cdp, "?")
        help_text = wait_until(
            lambda: cdp.evaluate("document.querySelector('#shortcuts-help:not([hidden])')?.innerText"), "the help"
        )
        assert "Shift+Enter" in help_text and "next turn without a label" in help_text
        press(cdp, "Escape")
        assert cdp.evaluate("document.querySelector('#shortcuts-help').hidden")

        shown = []
        for count, digit in enumerate(("3", "4", "5"), start=1):  # saves in a row: toasts do not pile up
            press(cdp, digit)
            press(cdp, "Enter")
            wait_until(lambda: len(app.service.history(turn_ids[2])) == count, f"save {count} of turn 2")
            shown.append(wait_until(lambda: cdp.evaluate(TOASTS), "a toast"))
        assert shown == [1, 1, 1], "toasts piled up"
