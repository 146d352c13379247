"""Fixtures for the data tests: no network, throw-away data roots, a local HTTP server."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_gen.data.mnist import load_mnist


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test touches the network or ~/.cache unless it asks to."""
    monkeypatch.setenv("PYRO_GEN_OFFLINE", "1")
    monkeypatch.setenv("PYRO_GEN_DATA", str(tmp_path / "default_root"))


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files[path] = (body, mode)``; mode "ok", "short" or "nolength"."""

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.server.requests.append(self.path)
        body, mode = self.server.files.get(self.path, (None, None))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if mode != "nolength":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # "short"/"nolength": the server dies mid-body; HTTP/1.0 closes the connection.
        self.wfile.write(body if mode == "ok" else body[: len(body) // 2])
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


class LocalServer:
    """A real HTTP server on 127.0.0.1 in a background thread."""

    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.files = {}
        self.httpd.requests = []
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def serve(self, path: str, body: bytes, mode: str = "ok") -> None:
        self.httpd.files[path] = (body, mode)

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    s = LocalServer()
    yield s
    s.close()


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding the MNIST cache, built once per session from the offline package."""
    root = tmp_path_factory.mktemp("mnist_root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYRO_GEN_OFFLINE", "1")
        load_mnist("train", root)
    return root
