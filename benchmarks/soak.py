"""Soak the app's storage: annotators save while analyses run and a second process opens the store;
the app is killed mid-way and restarted, then killed again and restarted, and every save must be
there exactly once.

    python -m benchmarks.soak [--annotators 16] [--saves 25] [--analyses 8] [--models doubles|real]
                              [--max-seconds 600] [--out FILE]

Everything runs on 127.0.0.1 in a temporary data dir (SQLite, as on a Space without PostgreSQL).
Each annotator sends its saves through `/save_correction` with a request id, retrying with the same
id when a reply is lost (as it is for the requests in flight when the app is killed). A second
process opens and closes the store over and over (as a CLI would) and tries to download the
database. Prints JSON: saves sent / acknowledged / stored after the restart (equal when nothing is
lost or stored twice), the analyses run and refused, the store opens, the download's HTTP status,
and the peak resident memory of each app process. `--models doubles` (the default) serves the
instant test doubles of tests/app_helpers.py; `--models real` the profile's real models.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from backend.labels import MELD7
from backend.settings import REPO_ROOT, Settings
from tests.app_helpers import SRT, write_dialogue

# The app as `python app.py` serves it, with the models chosen on the command line.
_APP = """
import sys
if sys.argv[1] == "doubles":
    from backend import predictors
    from tests.app_helpers import FarcerDouble, MisterEDouble
    predictors.PREDICTOR_LOADERS = {
        "mister_e": lambda profile, settings: MisterEDouble(),
        "farcer": lambda profile, settings: FarcerDouble(),
    }
from ui.layout import build_app, launch_options
build_app().launch(server_name="127.0.0.1", server_port=int(sys.argv[2]), quiet=True, **launch_options())
"""

# A second process: open the store, read from it, close it (what a CLI or a second worker does).
_OPENER = """
import sys
from backend.storage import Store
store = Store(sys.argv[1], sys.argv[2])
store.dialogues()
store.close()
"""


@dataclass
class SoakConfig:
    annotators: int = 16
    saves: int = 25  # per annotator
    analyses: int = 8
    models: str = "doubles"
    kill_after: float = 0.5  # kill the app once this share of the saves is acknowledged
    max_seconds: float = 600.0
    start_timeout_s: float = 180.0


@dataclass
class Counts:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    acknowledged: int = 0
    retries: int = 0
    analyses_done: int = 0
    analyses_refused: int = 0
    analyses_failed: int = 0
    store_opens: int = 0

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmHWM:"))


class App:
    """`python app.py`-like processes on one port and one data dir, killed and restarted at will."""

    def __init__(self, cfg: SoakConfig, data_dir: Path) -> None:
        self.cfg, self.port = cfg, _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {
            **os.environ,
            "ERC_DATA_DIR": str(data_dir),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
        }
        self.proc: subprocess.Popen | None = None
        self.up = threading.Event()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _APP, self.cfg.models, str(self.port)],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode} before answering")
            try:
                urllib.request.urlopen(self.url, timeout=5).read()
                self.up.set()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the app did not answer within {self.cfg.start_timeout_s} s")

    def kill(self) -> int:
        """SIGKILL (no shutdown code runs, as in a crash); the process's peak memory in MiB."""
        self.up.clear()
        peak = _peak_mb(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        return peak


def _client(app: App, deadline: float):
    from gradio_client import Client

    while time.monotonic() < deadline:
        if app.up.wait(timeout=1.0):
            try:
                return Client(app.url, verbose=False, download_files=False)
            except Exception:  # the app went down meanwhile
                time.sleep(0.2)
    raise TimeoutError("the app did not come back")


def _annotate(
    app: App, cfg: SoakConfig, k: int, turn_ids: list[int], counts: Counts, deadline: float
) -> None:
    client = None
    for i in range(cfg.saves):
        counts.add(sent=1)
        label = MELD7[(k + i) % len(MELD7)]
        request = (turn_ids[i % len(turn_ids)], label, f"annotator-{k:02d}", f"save {i}")
        while time.monotonic() < deadline:
            try:
                client = client or _client(app, deadline)
                client.predict(*request, f"soak-{k}-{i}", api_name="/save_correction")
                counts.add(acknowledged=1)
                break
            except Exception:  # the reply was lost (the app was killed): send the same request again
                counts.add(retries=1)
                client = None
                time.sleep(0.2)


def _analyse(app: App, video: Path, variants: list[Path], counts: Counts, deadline: float) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = None
    for subtitles in variants:
        if time.monotonic() >= deadline:
            return
        try:
            client = client or _client(app, deadline)
            client.predict(handle_file(video), handle_file(subtitles), "", api_name="/analyze")
            counts.add(analyses_done=1)
        except AppError as err:
            if "queue is full" not in str(err):
                raise
            counts.add(analyses_refused=1)
        except Exception:  # the app was killed under it
            counts.add(analyses_failed=1)
            client = None


def _open_store_repeatedly(settings: Settings, counts: Counts, stop: threading.Event) -> None:
    while not stop.is_set():
        subprocess.run(
            [sys.executable, "-c", _OPENER, settings.resolved_database_url, str(settings.media_dir)],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )
        counts.add(store_opens=1)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def run(cfg: SoakConfig) -> dict:
    from gradio_client import Client, handle_file

    started = time.monotonic()
    deadline = started + cfg.max_seconds
    with tempfile.TemporaryDirectory(prefix="erc-soak-") as tmp:
        folder = Path(tmp)
        video, subtitles = write_dialogue(folder)
        variants = []
        for i in range(cfg.analyses):
            variant = folder / f"variant-{i}.srt"
            variant.write_text(SRT.replace("Oh, hello!", f"Oh, hello number {i}!"), encoding="utf-8")
            variants.append(variant)
        settings = Settings(data_dir=folder / "data")
        app, counts, peaks = App(cfg, settings.data_dir), Counts(), []
        app.start()
        try:
            first = Client(app.url, verbose=False, download_files=False)
            doc = first.predict(handle_file(video), handle_file(subtitles), "", api_name="/analyze")
            turn_ids = [t["turn_id"] for t in doc["turns"]]
            download = _status(f"{app.url}gradio_api/file={settings.data_dir.resolve() / 'erc.sqlite3'}")
            stop_opening = threading.Event()
            workers = [
                threading.Thread(target=_annotate, args=(app, cfg, k, turn_ids, counts, deadline))
                for k in range(cfg.annotators)
            ]
            workers += [
                threading.Thread(target=_analyse, args=(app, video, variants[half::2], counts, deadline))
                for half in range(2)
            ]
            opener = threading.Thread(target=_open_store_repeatedly, args=(settings, counts, stop_opening))
            for thread in [*workers, opener]:
                thread.start()
            total = cfg.annotators * cfg.saves
            while counts.acknowledged < cfg.kill_after * total and time.monotonic() < deadline:
                time.sleep(0.05)
            peaks.append(app.kill())  # mid-soak: requests in flight lose their replies
            app.start()
            for thread in workers:
                thread.join(max(1.0, deadline - time.monotonic()))
            stop_opening.set()
            opener.join(120)
            peaks.append(app.kill())
            app.start()  # the restart: what is stored now is what survived
            export = Client(app.url, verbose=False).predict("jsonl", api_name="/export_corrections")
            history = [
                h
                for line in Path(export).read_text(encoding="utf-8").splitlines()
                for h in json.loads(line)["history"]
                if h["annotator"].startswith("annotator-")
            ]
            peaks.append(app.kill())
        finally:
            if app.proc is not None and app.proc.poll() is None:
                app.proc.kill()
    stored = len(history)
    distinct = len({(h["annotator"], h["note"]) for h in history})
    return {
        "models": "test doubles (tests/app_helpers.py)" if cfg.models == "doubles" else "real",
        "database": "SQLite (WAL)",
        "annotators": cfg.annotators,
        "saves_per_annotator": cfg.saves,
        "saves_sent": counts.sent,
        "saves_acknowledged": counts.acknowledged,
        "saves_stored_after_restart": stored,
        "saves_stored_twice": stored - distinct,
        "all_equal": counts.sent == counts.acknowledged == stored == distinct,
        "save_retries_after_lost_replies": counts.retries,
        "app_killed_and_restarted": 2,
        "analyses": {
            "requested": cfg.analyses,
            "completed": counts.analyses_done,
            "refused_queue_full": counts.analyses_refused,
            "lost_to_the_kill": counts.analyses_failed,
        },
        "second_process_store_opens": counts.store_opens,
        "database_download_http_status": download,
        "peak_rss_mib": {"app_before_kill": peaks[0], "app_after_restart": peaks[1], "app_final": peaks[2]},
        "peak_rss_mib_soak_driver": _peak_mb(os.getpid()),
        "wall_s": round(time.monotonic() - started, 1),
        "finished_within_max_seconds": time.monotonic() - started < cfg.max_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = SoakConfig()
    parser.add_argument("--annotators", type=int, default=defaults.annotators)
    parser.add_argument("--saves", type=int, default=defaults.saves, help="saves per annotator")
    parser.add_argument("--analyses", type=int, default=defaults.analyses)
    parser.add_argument("--models", choices=("doubles", "real"), default=defaults.models)
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    cfg = SoakConfig(
        annotators=args.annotators,
        saves=args.saves,
        analyses=args.analyses,
        models=args.models,
        max_seconds=args.max_seconds,
    )
    text = json.dumps(run(cfg), indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
