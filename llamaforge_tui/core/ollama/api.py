"""A small client for the Ollama server's HTTP API (stdlib only, short timeouts).

The store scan never depends on it: the server may be down or on another machine. The UI uses it to show
"server up, version X"; export uses it to register models. ``OLLAMA_HOST`` follows Ollama's own rules
(``envconfig.Host``): scheme defaults to http, host to 127.0.0.1, port to 11434.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import LlamaForgeError

if TYPE_CHECKING:
    from llamaforge_tui.core.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434


class OllamaServerError(LlamaForgeError):
    """The Ollama server is unreachable or answered with an error."""


def normalize_host(raw: str) -> str:
    """``0.0.0.0``, ``localhost:1234``, ``https://example.com`` -> a base URL without a trailing slash."""
    raw = raw.strip().strip('"').strip("'")
    default_port = DEFAULT_PORT
    if "://" in raw:  # an explicit scheme brings its own default port, as in Ollama's envconfig.Host
        default_port = {"http": 80, "https": 443}.get(raw.split("://", 1)[0].lower(), DEFAULT_PORT)
    else:
        raw = "http://" + raw
    parts = urllib.parse.urlsplit(raw)
    scheme = parts.scheme or "http"
    host = parts.hostname or DEFAULT_HOST
    if host == "0.0.0.0":  # a bind address; clients reach it on loopback
        host = DEFAULT_HOST
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise OllamaServerError(f"invalid OLLAMA_HOST {raw!r}: {exc}") from exc
    path = parts.path.rstrip("/")
    return f"{scheme}://{host}:{port}{path}"


def ollama_host(settings: Settings | None = None) -> str:
    """The server URL: the setting, else ``$OLLAMA_HOST``, else ``http://127.0.0.1:11434``."""
    raw = (settings.ollama_host if settings is not None else "") or os.environ.get("OLLAMA_HOST", "")
    return normalize_host(raw)


@dataclass(frozen=True)
class ServerStatus:
    host: str
    up: bool
    version: str | None
    error: str | None = None

    def describe(self) -> str:
        if self.up:
            return f"Ollama {self.version or '(unknown version)'} at {self.host}"
        return f"Ollama server not reachable at {self.host}" + (f" ({self.error})" if self.error else "")


class OllamaClient:
    """Blocking JSON calls with a timeout. Methods raise ``OllamaServerError`` with a one-line message."""

    def __init__(self, host: str | None = None, *, timeout: float = 2.0) -> None:
        self.host = normalize_host(host) if host else ollama_host()
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(self.host + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read(2000).decode("utf-8", errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except (json.JSONDecodeError, AttributeError):
                pass
            raise OllamaServerError(f"Ollama {method} {path}: HTTP {exc.code}: {detail}".strip()) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise OllamaServerError(f"Ollama server not reachable at {self.host}: {reason}") from exc
        try:
            return json.loads(payload.decode("utf-8")) if payload else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OllamaServerError(f"Ollama {method} {path}: the answer is not JSON") from exc

    def version(self) -> str | None:
        """The server's version, or None when it does not answer (this never raises)."""
        try:
            doc = self._request("GET", "/api/version")
        except OllamaServerError:
            return None
        return str(doc.get("version")) if isinstance(doc, dict) and doc.get("version") else None

    def tags(self) -> list[dict[str, Any]]:
        doc = self._request("GET", "/api/tags")
        return list(doc.get("models") or []) if isinstance(doc, dict) else []

    def show(self, model: str, *, verbose: bool = False) -> dict[str, Any]:
        doc = self._request("POST", "/api/show", {"model": model, "verbose": verbose}, timeout=max(self.timeout, 10))
        if not isinstance(doc, dict):
            raise OllamaServerError(f"Ollama /api/show {model}: unexpected answer")
        return doc


def server_status(settings: Settings | None = None, *, timeout: float = 1.0) -> ServerStatus:
    """Is the server up, and which version? Quick, and never raises (the UI polls it)."""
    try:
        host = ollama_host(settings)
    except OllamaServerError as exc:
        return ServerStatus(host=os.environ.get("OLLAMA_HOST", ""), up=False, version=None, error=str(exc))
    client = OllamaClient(host, timeout=timeout)
    try:
        doc = client._request("GET", "/api/version")
    except OllamaServerError as exc:
        return ServerStatus(host=host, up=False, version=None, error=str(exc).split(": ", 1)[-1])
    version = str(doc.get("version")) if isinstance(doc, dict) and doc.get("version") else None
    return ServerStatus(host=host, up=True, version=version)
