"""Every version of every model as the app and `python -m training versions` list them, and switching
the version new analyses use."""

from __future__ import annotations

from backend.errors import InputError
from backend.model_store import open_model_store
from backend.registry import MODELS, find_spec
from backend.settings import Settings

CARD_DATA = ("corpus", "data", "command", "corrections")


def version_rows(settings: Settings, model: str | None = None) -> list[dict]:
    """{model, version, name, created_at, builtin, active, metrics (validation weighted F1 per view), data,
    path} for each version, built-in ones first, then trained ones oldest first. A served model's
    active version is the one activated, else the profile's built-in folder."""
    store = open_model_store(settings)
    rows = []
    for info in store.versions(model):
        spec = find_spec(info.model)
        active = spec and (store.active_version(info.model) or spec.checkpoints.get(settings.profile))
        data = info.data.get("data") if isinstance(info.data.get("data"), dict) else {}
        rows.append(
            {
                "model": info.model,
                "version": info.version,
                "name": info.name,
                "created_at": info.created_at,
                "builtin": info.builtin,
                "active": bool(active) and active in (info.version, info.name),  # as store.find matches it
                "metrics": info.validation,
                "data": {
                    **{k: v for k, v in info.data.items() if k in CARD_DATA},
                    **{k: v for k, v in data.items() if k in ("corpus", "corrections")},
                },
                "path": str(info.path),
            }
        )
    return rows


def served_model(model: str) -> str:
    """`model` if the app runs it (mister-e, farcer), else an InputError naming those it runs."""
    served = [spec.name for spec in MODELS]
    if model not in served:
        raise InputError(f"unknown model {model!r}; the app runs {', '.join(served)}")
    return model


def activate(settings: Settings, model: str, version: str) -> dict:
    """Make `version` (a version id or a built-in folder name) the one new analyses of `model` use;
    {model, version}. Loaded predictors follow at the next analysis (backend.predictors keys its cache
    by the active version), so no restart is needed."""
    checkpoint = open_model_store(settings).activate(served_model(model), version)
    return {"model": model, "version": checkpoint.version}
