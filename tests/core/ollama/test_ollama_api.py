"""The Ollama HTTP client: host resolution as Ollama does it, server status against a local fake server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llamaforge_tui.core.ollama.api import OllamaClient, OllamaServerError, normalize_host, ollama_host, server_status
from llamaforge_tui.core.settings import Settings


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/api/version":
            self._send(200, {"version": "0.33.0"})
        elif self.path == "/api/tags":
            self._send(200, {"models": [{"name": "gemma3:270m"}]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("model") == "gemma3:270m":
            self._send(200, {"model_info": {"general.architecture": "gemma3"}})
        else:
            self._send(404, {"error": f"model '{body.get('model')}' not found"})

    def _send(self, code: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("raw, url", [
    ("", "http://127.0.0.1:11434"),
    ("0.0.0.0", "http://127.0.0.1:11434"),
    ("localhost:1234", "http://localhost:1234"),
    ("https://example.com", "https://example.com:443"),
    ("http://example.com", "http://example.com:80"),
    ("[::1]:5000", "http://[::1]:5000"),
    ("example.com/ollama/", "http://example.com:11434/ollama"),
])
def test_host_resolution_follows_ollama(raw: str, url: str) -> None:
    assert normalize_host(raw) == url


def test_setting_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "10.0.0.1:1111")
    assert ollama_host(Settings()) == "http://10.0.0.1:1111"
    assert ollama_host(Settings(ollama_host="127.0.0.1:2222")) == "http://127.0.0.1:2222"


def test_server_up(fake_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", fake_server)
    status = server_status(Settings())
    assert status.up and status.version == "0.33.0"
    assert status.describe() == f"Ollama 0.33.0 at http://{fake_server}"
    client = OllamaClient(fake_server)
    assert client.version() == "0.33.0"
    assert client.tags() == [{"name": "gemma3:270m"}]
    assert client.show("gemma3:270m")["model_info"]["general.architecture"] == "gemma3"
    with pytest.raises(OllamaServerError, match="HTTP 404: model 'nope' not found"):
        client.show("nope")


def test_server_down_is_a_status_not_an_error() -> None:
    status = server_status(Settings())  # conftest points OLLAMA_HOST at a dead port
    assert not status.up and status.version is None
    assert status.describe().startswith("Ollama server not reachable at http://127.0.0.1:9")
    assert OllamaClient().version() is None
    with pytest.raises(OllamaServerError, match="not reachable"):
        OllamaClient().tags()
