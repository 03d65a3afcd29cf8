"""All runtime settings in one place, read from `ERC_*` environment variables."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.profiles import PROFILES

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS_DIR = REPO_ROOT / "checkpoints"


def on_spaces() -> bool:
    """True inside a Hugging Face Space, or with ERC_SPACES_PREVIEW=1 to try Spaces mode locally (the
    login button, login required; gradio then signs in with the local Hugging Face token)."""
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("ERC_SPACES_PREVIEW", "") in ("1", "true")


def _default_data_dir() -> Path:
    # Spaces mounts persistent storage at /data; everything else keeps data beside the checkout.
    spaces_storage = Path("/data")
    if on_spaces() and spaces_storage.is_dir() and os.access(spaces_storage, os.W_OK):
        return spaces_storage
    return Path("./data")


def _default_model_cache() -> Path:
    # Converted packaged weights are the same for every data dir: keep them in the user's cache.
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "erc-studio"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ERC_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = None
    profile: str = PROFILES[0]
    device: str = "auto"
    # Weights of the pretrained backbones and FARCER's core: "auto" is bfloat16 on a GPU (an 8B core
    # in float32 needs 32 GB) and float32 on the CPU; trained heads and projectors stay float32.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    checkpoints_dir: Path = CHECKPOINTS_DIR
    model_cache_dir: Path = Field(default_factory=_default_model_cache)
    max_upload_mb: float = Field(default=200.0, gt=0)
    max_video_s: float = Field(default=600.0, gt=0)
    max_turns: int = Field(default=200, ge=1)
    max_queued_analyses: int = Field(default=8, ge=0)
    require_login: bool = Field(default_factory=on_spaces)
    # Language spoken in uploaded videos, as a Whisper language code ("en", "de", "fr", ...), for
    # transcribing videos that come without subtitles. The offline profile transcribes "en" with the
    # packaged English-only Whisper tiny.en and any other language with the packaged multilingual
    # Whisper base; the paper profile's Whisper small takes the language as it is.
    asr_language: str = "en"
    # Names (or Hugging Face usernames), comma-separated in ERC_ANNOTATORS / ERC_ADJUDICATORS.
    annotators: Annotated[list[str], NoDecode] = Field(default_factory=list)
    adjudicators: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Blind labelling: None means on when more than one annotator is configured (see `blind_mode`).
    blind: bool | None = None
    # Retraining from corrections (backend.retrain_jobs): the corpus the corrections join (`--corpus`,
    # `--data`), extra `train` arguments per model as JSON ({"mister-e": "--preset tiny --epochs 5"}),
    # and, where login is required (a public Space), the usernames allowed to retrain or activate.
    retrain_corpus: str = "meld"
    retrain_data: Path | None = None
    retrain_args: dict[str, str] = Field(default_factory=dict)
    model_managers: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"ERC_PROFILE must be one of {', '.join(PROFILES)}, got {value!r}")
        return value

    @field_validator("annotators", "adjudicators", "model_managers", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @property
    def blind_mode(self) -> bool:
        """Annotators see the models' suggestions and their own labels only (adjudicators see all)."""
        return self.blind if self.blind is not None else len(set(self.annotators)) > 1

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'erc.sqlite3').resolve()}"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def cache_dir(self) -> Path:
        """Training caches (embeddings, decoded images, face vectors); never served."""
        return self.data_dir / "cache"

    @property
    def models_dir(self) -> Path:
        """The model store's trained versions (see backend.model_store)."""
        return self.data_dir / "models"

    @property
    def jobs_dir(self) -> Path:
        """Retraining jobs: each one's command, log, exit status and report (backend.retrain_jobs)."""
        return self.data_dir / "jobs"

    @property
    def served_dir(self) -> Path:
        """The only folder pages may fetch files from (see backend.served_files); no database in it."""
        return self.data_dir / "served"

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def torch_dtype(self) -> "torch.dtype":
        """The dtype backbones load in (see `dtype`), for the device `torch_device` picks."""
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        return torch.bfloat16 if self.torch_device().startswith("cuda") else torch.float32


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests that change the environment call `cache_clear`)."""
    return Settings()
