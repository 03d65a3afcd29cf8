"""ERC Studio: `python app.py` serves the app on 127.0.0.1:7860 (GRADIO_SERVER_NAME/PORT override)."""

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from ui.layout import build_app, launch_options, spaces_problem  # noqa: E402

if problem := spaces_problem():
    sys.exit(f"error: {problem}")
demo = build_app()

if __name__ == "__main__":
    demo.launch(**launch_options())
