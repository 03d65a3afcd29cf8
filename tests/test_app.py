"""The app starts offline and serves its page and the analyze endpoint."""
import socket
import urllib.request

import pytest


@pytest.fixture
def running_app(data_dir):
    from ui.app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}"
    demo.close()


def test_app_serves_page_and_api(running_app):
    page = urllib.request.urlopen(running_app, timeout=30).read().decode()
    assert "ERC Studio" in page
    from gradio_client import Client

    api = Client(running_app, verbose=False).view_api(print_info=False, return_format="dict")
    assert "/analyze" in api["named_endpoints"]


def test_model_status_names_unavailable_models():
    from ui.app import model_status_markdown

    text = model_status_markdown("offline")
    assert "`mister_e`" in text and "`farcer`" in text
    assert "Profile `offline`" in text
