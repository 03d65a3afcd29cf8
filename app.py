"""ERC Studio: `python app.py` serves the app on 127.0.0.1:7860 (GRADIO_SERVER_NAME/PORT override)."""

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

if os.environ.get("SPACE_ID"):  # a Space installs requirements.txt only: add requirements-nodeps.txt once
    from backend.nodeps import ensure_nodeps

    if report := ensure_nodeps():
        print(report, file=sys.stderr)

from ui.layout import build_app, launch_options, spaces_problem  # noqa: E402

if problem := spaces_problem():
    sys.exit(f"error: {problem}")
demo = build_app()

if __name__ == "__main__":
    demo.launch(**launch_options())
