"""A throwaway PostgreSQL server for tests (`postgres_url` fixture); skips when the binaries are missing."""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PG_TIMEOUT_S = 60


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg", reason="psycopg (PostgreSQL driver) is not installed")
    bin_dir = _pg_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl); `apt-get install postgresql` runs this")
    prefix: list[str] = []
    # initdb refuses to run as root, and pytest's tmp dirs are private to root, so the cluster
    # lives in its own temp dir owned by an unprivileged user.
    root = Path(tempfile.mkdtemp(prefix="erc-pg-"))
    if os.geteuid() == 0:
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        if user is None or shutil.which("runuser") is None:
            shutil.rmtree(root)
            pytest.skip("running as root without runuser or an unprivileged user to run PostgreSQL")
        prefix = ["runuser", "-u", user, "--"]
        uid = pwd.getpwnam(user)
        os.chown(root, uid.pw_uid, uid.pw_gid)
    data, log = root / "data", root / "server.log"

    def pg(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=PG_TIMEOUT_S)

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "erc", "--auth=trust", "-N", "-E", "UTF8")
        pg(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            str(PG_TIMEOUT_S),
            "-o",
            f"-k {shlex.quote(str(root))} -c listen_addresses='' -F",
            "start",
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        _stop_postgres(prefix, bin_dir, root)
        pytest.fail(f"could not start a throwaway PostgreSQL: {exc}\n{exc.stderr!r}\n{server_log}")
    try:
        yield f"postgresql+psycopg://erc@/postgres?host={root}"
    finally:
        _stop_postgres(prefix, bin_dir, root)


def _stop_postgres(prefix: list[str], bin_dir: Path, root: Path) -> None:
    if (root / "data" / "postmaster.pid").exists():
        stop = [str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"]
        subprocess.run([*prefix, *stop], capture_output=True, timeout=PG_TIMEOUT_S)
    shutil.rmtree(root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
