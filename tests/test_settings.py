from pathlib import Path

import pytest
from pydantic import ValidationError

from backend.settings import Settings


def test_defaults(monkeypatch):
    for var in ("ERC_DATA_DIR", "ERC_DATABASE_URL", "ERC_PROFILE", "SPACE_ID", "ERC_REQUIRE_LOGIN"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.data_dir == Path("./data")
    assert s.profile == "offline"
    assert s.require_login is False
    assert s.resolved_database_url == f"sqlite:///{Path('./data/erc.sqlite3').resolve()}"


def test_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("ERC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ERC_DATABASE_URL", "postgresql+psycopg://u@localhost/erc")
    monkeypatch.setenv("ERC_PROFILE", "paper")
    monkeypatch.setenv("ERC_MAX_TURNS", "12")
    s = Settings()
    assert s.data_dir == tmp_path and s.profile == "paper" and s.max_turns == 12
    assert s.resolved_database_url == "postgresql+psycopg://u@localhost/erc"
    assert s.media_dir == tmp_path / "media"


def test_spaces_requires_login_by_default(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/erc")
    monkeypatch.delenv("ERC_REQUIRE_LOGIN", raising=False)
    assert Settings().require_login is True
    monkeypatch.setenv("ERC_REQUIRE_LOGIN", "0")
    assert Settings().require_login is False


def test_unknown_profile_rejected(monkeypatch):
    monkeypatch.setenv("ERC_PROFILE", "huge")
    with pytest.raises(ValidationError):
        Settings()
