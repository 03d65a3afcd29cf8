"""Time the app as a user meets it: `python app.py` until the page answers, then /analyze of a
30 s, 6-turn subtitled dialogue video through gradio_client, then the same call again (reopened).

    python -m benchmarks.app_latency [--profile offline|paper] [--out FILE]

Prints JSON with the seconds each step took against the targets (page within 20 s of start,
analysis within 15 s), the models that ran and the analysis' own stage timings. Uses whatever
models the profile has; the JSON's `models` and `warnings` say which those were.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from backend.settings import REPO_ROOT
from backend.synthetic_media import make_dialogue_video


@dataclass
class BenchConfig:
    video_s: float = 30.0
    turns: int = 6
    start_target_s: float = 20.0
    analyze_target_s: float = 15.0
    start_timeout_s: float = 120.0
    memory_target_mib: int = 2560  # both models loaded, after an analysis


def dialogue(cfg: BenchConfig, folder: Path) -> tuple[Path, Path]:
    """The video and an SRT naming the two speakers, one turn per 80% of its slot."""
    slot = cfg.video_s / cfg.turns
    turns = [(round(i * slot + 0.1 * slot, 3), round(i * slot + 0.9 * slot, 3)) for i in range(cfg.turns)]
    video = make_dialogue_video(folder / "dialogue.mp4", turns, duration_s=cfg.video_s)
    clock = lambda s: f"00:00:{int(s):02d},{round(s % 1 * 1000):03d}"  # noqa: E731
    cues = [
        f"{i + 1}\n{clock(a)} --> {clock(b)}\n{('Ann', 'Ben')[i % 2]}: this is line {i + 1} of the talk.\n"
        for i, (a, b) in enumerate(turns)
    ]
    subtitles = folder / "dialogue.srt"
    subtitles.write_text("\n".join(cues), encoding="utf-8")
    return video, subtitles


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_page(url: str, proc: subprocess.Popen, timeout_s: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode} before answering")
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return time.perf_counter() - start
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"app.py did not answer within {timeout_s} s")


def _memory_mib(pid: int) -> dict[str, int]:
    """The app process's resident memory now and at its peak (Linux /proc), in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss": int(fields["VmRSS"].split()[0]) // 1024, "peak_rss": int(fields["VmHWM"].split()[0]) // 1024}


def run(cfg: BenchConfig, profile: str) -> dict:
    from gradio_client import Client, handle_file

    from backend.packaged import converted_lm
    from backend.settings import get_settings

    # The packaged core is converted once per machine (~2.8 GB for a minute); measure the app after that.
    converted_lm("smollm2", get_settings().model_cache_dir)
    with tempfile.TemporaryDirectory(prefix="erc-bench-") as tmp:
        folder = Path(tmp)
        video, subtitles = dialogue(cfg, folder)
        port = _free_port()
        env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "ERC_DATA_DIR": str(folder / "data")}
        proc = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}/"
            start_s = _wait_for_page(url, proc, cfg.start_timeout_s)
            client = Client(url, verbose=False)
            t = time.perf_counter()
            doc = client.predict(handle_file(video), handle_file(subtitles), profile, api_name="/analyze")
            analyze_s = time.perf_counter() - t
            t = time.perf_counter()
            again = client.predict(handle_file(video), handle_file(subtitles), profile, api_name="/analyze")
            reopen_s = time.perf_counter() - t
            memory = _memory_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {
        "video_s": cfg.video_s,
        "turns": len(doc["turns"]),
        "profile": doc["profile"],
        "cpu_count": os.cpu_count(),
        "start_s": round(start_s, 2),
        "analyze_s": round(analyze_s, 2),
        "reopen_s": round(reopen_s, 2),
        "reopened_without_recompute": again["reused"],
        "start_ok": start_s <= cfg.start_target_s,
        "analyze_ok": analyze_s <= cfg.analyze_target_s,
        "targets_s": {"start": cfg.start_target_s, "analyze": cfg.analyze_target_s},
        "models": doc["models"],
        "analysis_timings_s": doc["timings_s"],
        "app_memory_mib": memory,
        "memory_ok": memory["peak_rss"] <= cfg.memory_target_mib,
        "memory_target_mib": cfg.memory_target_mib,
        "warnings": doc["warnings"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("offline", "paper"), default="offline")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    text = json.dumps(run(BenchConfig(), args.profile), indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
