"""Retraining from corrections as background jobs: `python -m training retrain ...` in a process of its
own (the app never imports `training`), one job at a time.

Each job is a folder `ERC_DATA_DIR/jobs/<job_id>/` holding `job.json` (model, options, command, pid,
start time), `log.txt` (the run's output: tqdm bars and `stage: ...` lines), `rc` (its exit status,
written when it ends), `cancelled` (when cancelled) and `report.json` (the candidate version and its
comparison with the active version). Everything is read back from there, so a page reload or an app
restart finds the job as it stands. `jobs/running` names the running job and is created exclusively,
so two starts cannot both win.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from backend.errors import InputError
from backend.model_versions import served_model
from backend.settings import REPO_ROOT, Settings

RUNNING = "running"
_TAIL_BYTES = 16_384
# A tqdm bar as it prints: "desc:  40%|####      | 2/5 [00:03<00:04, 1.2it/s]"
_BAR = re.compile(r"(?:(?P<desc>[^\r\n|]*?): *)?(?P<pct>\d+)%\|[^|]*\| *(?P<n>\d+)/(?P<total>\d+) \[(?P<elapsed>[\d:]+)<(?P<eta>[\d:?]+)")
_STAGE = re.compile(r"^stage: (.+)$", re.M)
_ERROR = re.compile(r"^error: (.+)$", re.M)
_OPTIONS = {"corrections_weight": float, "epochs": int, "max_steps": int, "seed": int}
_JOB_ID = re.compile(r"[0-9a-f]{16}")


def _seconds(clock: str) -> int | None:
    if "?" in clock:
        return None
    parts = [int(p) for p in clock.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def progress_of(log: str) -> dict:
    """{progress (0-1 of the current bar, or None), eta_s (of the current bar), message} from a log tail."""
    stage = (_STAGE.findall(log) or ["starting"])[-1]
    bars = list(_BAR.finditer(log))
    if not bars:
        return {"progress": None, "eta_s": None, "message": stage}
    bar = bars[-1]
    n, total = int(bar["n"]), int(bar["total"])
    desc = (bar["desc"] or "").strip()
    return {
        "progress": n / total if total else None,
        "eta_s": _seconds(bar["eta"]),
        "message": f"{stage}: {desc + ' ' if desc else ''}{n}/{total}",
    }


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if absent) against other processes."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RetrainJobs:
    """The jobs under `settings.jobs_dir`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.jobs_dir
        self._children: dict[str, subprocess.Popen] = {}  # started by this process: reaped by poll()

    # ------------------------------------------------------------------ starting

    def command(self, model: str, options: dict | None, report: Path) -> list[str]:
        """The `python -m training retrain` command of a job: the app's corpus and database, the
        configured arguments, and the options a caller may set (corrections_weight, epochs, max_steps, seed)."""
        settings = self.settings
        if settings.retrain_data is None:
            raise InputError(
                "retraining needs the corpus the corrections join: set ERC_RETRAIN_DATA to its folder "
                f"(and ERC_RETRAIN_CORPUS, now {settings.retrain_corpus!r})"
            )
        argv = [sys.executable, "-m", "training", "retrain", model, "--report", str(report),
                "--corpus", settings.retrain_corpus, "--data", str(settings.retrain_data),
                "--corrections", settings.resolved_database_url]
        argv += shlex.split(settings.retrain_args.get(model, ""))
        for key, value in (options or {}).items():
            if key not in _OPTIONS:
                raise InputError(f"unknown retrain option {key!r}; use {', '.join(_OPTIONS)}")
            try:
                argv += [f"--{key.replace('_', '-')}", str(_OPTIONS[key](value))]
            except (TypeError, ValueError):
                raise InputError(f"retrain option {key} must be a {_OPTIONS[key].__name__}, got {value!r}") from None
        return argv

    def _environment(self) -> dict[str, str]:
        """The job sees this app's settings, whether they came from the environment or not."""
        settings = self.settings
        env = {**os.environ, "ERC_DATA_DIR": str(settings.data_dir), "ERC_PROFILE": settings.profile,
               "ERC_CHECKPOINTS_DIR": str(settings.checkpoints_dir),
               "ERC_MODEL_CACHE_DIR": str(settings.model_cache_dir), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        if settings.database_url:
            env["ERC_DATABASE_URL"] = settings.database_url
        # The job shares the CPU with the app's analyses: one thread unless told otherwise (two torch
        # threads on two busy cores made a MiSTER-E stage-2 epoch 8x slower than one, 143 s vs 18 s).
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def start(self, model: str, options: dict | None = None) -> dict:
        """Start retraining `model`; {job_id}. Refused while another job runs."""
        served_model(model)
        job_id = secrets.token_hex(8)
        folder = self.root / job_id
        argv = self.command(model, options, folder / "report.json")
        self.root.mkdir(parents=True, exist_ok=True)
        # Claiming the marker and writing the job's record happen under one file lock, which every
        # thread and every app process on this machine honours (each open of the file is a lock
        # holder of its own): without it a second one could read the marker between its creation and
        # the job id written into it, take it for a dead job's, and start a second job beside the first.
        with _exclusive(self.root / ".claim.lock"):
            self._claim(job_id)
            try:
                folder.mkdir()
                rc = folder / "rc"
                with open(folder / "log.txt", "wb") as log:
                    child = subprocess.Popen(
                        ["sh", "-c", 'rc=$1; shift; "$@"; echo $? > "$rc"', "sh", str(rc), *argv],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
                        env=self._environment(), start_new_session=True,
                    )
            except BaseException:
                (self.root / RUNNING).unlink(missing_ok=True)
                raise
            self._children[job_id] = child
            record = {"job_id": job_id, "model": model, "options": options or {}, "command": argv,
                      "pid": child.pid, "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
            (folder / "job.json").write_text(json.dumps(record, indent=2) + "\n")
        return {"job_id": job_id}

    def _claim(self, job_id: str) -> None:
        """Create `jobs/running` for `job_id`, or refuse naming the job that runs."""
        marker = self.root / RUNNING
        for _ in range(2):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                other = marker.read_text().strip()
                if other and self.status(other)["state"] == "running":
                    job = self._job(other)
                    raise InputError(
                        f"a retraining job is running ({job.get('model', '?')}, job {other}); wait for it to "
                        "finish or cancel it before starting another"
                    ) from None
                marker.unlink(missing_ok=True)  # its job has ended
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(job_id)
            return
        raise InputError("another retraining job is starting at this moment; try again")

    # ------------------------------------------------------------------ reading

    def _folder(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id) or not (self.root / job_id).is_dir():
            raise InputError(f"no retraining job {str(job_id)[:40]!r}; start one with /retrain")
        return self.root / job_id

    def _job(self, job_id: str) -> dict:
        path = self._folder(job_id) / "job.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _running(self, job_id: str, job: dict) -> bool:
        child = self._children.get(job_id)
        if child is not None:
            return child.poll() is None
        return "pid" in job and _alive(job["pid"])

    def status(self, job_id: str) -> dict:
        """{job_id, model, state (running, succeeded, failed, cancelled), progress, eta_s, message,
        version, metrics, started_at}; `version` and `metrics` (the comparison) once it succeeded."""
        folder = self._folder(job_id)
        job = self._job(job_id)
        log = _tail(folder / "log.txt")
        out = {"job_id": job_id, "model": job.get("model"), "started_at": job.get("started_at"),
               "version": None, "metrics": None, **progress_of(log)}
        rc = folder / "rc"
        if (folder / "cancelled").exists():
            state, out["message"] = "cancelled", "cancelled"
        elif rc.is_file() and rc.read_text().strip() == "0" and (folder / "report.json").is_file():
            report = json.loads((folder / "report.json").read_text())
            state = "succeeded"
            out.update(progress=1.0, eta_s=0, message=f"new version {report['version']}",
                       version=report["version"], metrics=report)
        elif rc.is_file() or not self._running(job_id, job):
            errors = _ERROR.findall(log)
            state = "failed"
            out["message"] = errors[-1] if errors else (
                "the job stopped without finishing" + (f" (exit status {rc.read_text().strip()})" if rc.is_file() else
                                                       " (the machine or the app was restarted?)"))
        else:
            state = "running"
        out["state"] = state
        return out

    def latest(self) -> dict | None:
        """The status of the most recently started job, or None."""
        if not self.root.is_dir():
            return None
        jobs = [p for p in self.root.iterdir() if p.is_dir() and (p / "job.json").is_file()]
        if not jobs:
            return None
        newest = max(jobs, key=lambda p: (json.loads((p / "job.json").read_text())["started_at"], p.stat().st_mtime))
        return self.status(newest.name)

    def cancel(self, job_id: str) -> dict:
        """Stop a running job (its whole process group); its status."""
        folder = self._folder(job_id)
        job = self._job(job_id)
        if self.status(job_id)["state"] != "running":
            raise InputError(f"job {job_id} is not running; nothing to cancel")
        (folder / "cancelled").write_text(datetime.now(UTC).isoformat(timespec="seconds") + "\n")
        try:
            os.killpg(job["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
        child = self._children.get(job_id)
        if child is not None:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(job["pid"], signal.SIGKILL)
                child.wait()
        (self.root / RUNNING).unlink(missing_ok=True)
        return self.status(job_id)

    def wait(self, job_id: str, timeout_s: float) -> dict:
        """The job's status once it is no longer running, or after `timeout_s` (for scripts and tests)."""
        deadline = time.monotonic() + timeout_s
        while (status := self.status(job_id))["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
        return status


def _tail(path: Path) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        return handle.read().decode("utf-8", "replace")
