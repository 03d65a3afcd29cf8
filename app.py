"""ERC Studio: `python app.py` serves the app on 127.0.0.1:7860 (GRADIO_SERVER_NAME/PORT override)."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from ui.layout import build_app, launch_options  # noqa: E402

demo = build_app()

if __name__ == "__main__":
    demo.launch(**launch_options())
