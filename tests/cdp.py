"""A tiny Chrome DevTools Protocol client: headless Chromium driven over its debugging websocket.

Test tooling only (the browser tests press real keys through it).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import websocket

START_LIMIT_S = 30


class CDPError(RuntimeError):
    pass


class CDP:
    """One page target: `call` sends a command and returns its result (events are dropped)."""

    def __init__(self, ws_url: str, timeout_s: float = 60) -> None:
        # No Origin header: Chromium refuses debugging websockets from origins it was not told about.
        self.ws = websocket.create_connection(ws_url, timeout=timeout_s, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") != message_id:
                continue
            if "error" in message:
                raise CDPError(f"{method}: {message['error']}")
            return message["result"]

    def evaluate(self, js: str) -> Any:
        """The value of the expression `js` in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CDPError(f"{js[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()


def _page_websocket(port: int, process: subprocess.Popen) -> str:
    """The debugging websocket URL of the browser's first page, once it is listening."""
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode} before its debugging port opened")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
                targets = json.load(answer)
        except OSError:
            time.sleep(0.2)
            continue
        pages = [t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"]
        if pages:
            return pages[0]
        time.sleep(0.2)
    raise TimeoutError(f"chromium's debugging port {port} did not answer in {START_LIMIT_S} s")


@contextmanager
def chromium_session(binary: str, flags: list[str], port: int, profile_dir: Path) -> Iterator[CDP]:
    """Chromium on about:blank with its debugging port open; killed on the way out."""
    command = [
        binary,
        *flags,
        f"--remote-debugging-port={port}",
        f"--user-data-dir={profile_dir}",
        "about:blank",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cdp = CDP(_page_websocket(port, process))
        try:
            yield cdp
        finally:
            cdp.close()
    finally:
        process.kill()
        process.wait(timeout=30)
