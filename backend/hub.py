"""Loading Hugging Face models by name (the paper profile): from the local cache or a local folder,
with a clear `ModelUnavailableError` instead of a stack trace when they are not there."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from backend.errors import ModelUnavailableError


def from_pretrained(loader: Callable[..., Any], name: str, what: str, **kwargs: Any) -> Any:
    """`loader(name, **kwargs)` (a `from_pretrained`), or ModelUnavailableError saying how to get `name`."""
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as exc:
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
        raise ModelUnavailableError(
            f"{what} {name!r} is not available on this machine{offline}: {type(exc).__name__}. Download it once "
            f"where the Hugging Face hub is reachable (`hf download {name}`) or pass a local folder, "
            "or use the offline profile."
        ) from None
