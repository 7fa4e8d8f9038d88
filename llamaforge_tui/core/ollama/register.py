"""Registering an export with a running Ollama server, through its HTTP API only.

The flow is the one the ``ollama`` CLI itself uses since v0.5.5: upload each file as a blob
(``HEAD /api/blobs/sha256:<hex>`` first, so a blob the server already has is not sent again; then
``POST`` with the raw bytes), then ``POST /api/create`` with ``files`` (and ``adapters``), ``template``,
``parameters``, ``system`` and ``license``, whose streamed ``{"status": ...}`` lines feed the progress view.
The result is checked with ``/api/show``, not by digest: recent servers requantize on create. We never
write into the Ollama store ourselves.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import shlex
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.ollama.modelfile import ModelfileSpec
from llamaforge_tui.core.ollama.api import normalize_host

CHUNK = 1 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*){0,2}(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$")


class RegistrationError(LlamaForgeError):
    """Ollama refused or could not be reached; the message says what to do."""


class ServerUnreachable(RegistrationError):
    pass


class NameClash(RegistrationError):
    """A model with this name exists; the caller asks the user, then retries with ``force=True``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"an Ollama model named {name} already exists; choose another --name, or pass --force to replace it")
        self.name = name


@dataclass(frozen=True)
class RegisterStatus:
    """One progress line: ``phase`` is upload/create/check; ``completed``/``total`` bytes while uploading."""

    phase: str
    message: str
    completed: int = 0
    total: int = 0


@dataclass
class RegistrationResult:
    name: str
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    show: dict[str, Any] = field(default_factory=dict)

    @property
    def quantization_level(self) -> str | None:
        return (self.show.get("details") or {}).get("quantization_level")


def validate_name(name: str) -> str:
    name = name.strip()
    if not _NAME_RE.match(name):
        raise RegistrationError(f"invalid Ollama model name {name!r}: use letters, digits, '.', '_', '-', "
                                "an optional namespace/ and an optional :tag")
    return name


def full_name(name: str) -> str:
    """``mymodel`` -> ``mymodel:latest`` (how the server lists it)."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def file_digest(path: Path | str, progress: Callable[[int, int], None] | None = None) -> str:
    """``sha256:<hex>`` of a file, streamed."""
    h = hashlib.sha256()
    path = Path(path)
    total = path.stat().st_size
    done = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return "sha256:" + h.hexdigest()


def create_command(name: str, modelfile: Path | str) -> str:
    """The exact command to run when no server is reachable now."""
    return f"ollama create {shlex.quote(name)} -f {shlex.quote(str(modelfile))}"


def _error_text(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return text[:500] or "(empty answer)"
    if isinstance(doc, dict) and doc.get("error"):
        return str(doc["error"])
    return text[:500]


class OllamaRegistrar:
    """Blocking HTTP calls to one server. Every failure is a ``RegistrationError`` with one clear line."""

    def __init__(self, host: str, *, timeout: float = 30.0) -> None:
        self.host = normalize_host(host)
        parts = urllib.parse.urlsplit(self.host)
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout

    def _conn(self, timeout: float | None = None) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._netloc, timeout=timeout or self.timeout)

    def _send(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
              timeout: float | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._conn(timeout)
        try:
            conn.request(method, self._prefix + path, body=body, headers=headers or {})
            return conn, conn.getresponse()
        except (ConnectionError, TimeoutError, OSError) as exc:
            conn.close()
            raise ServerUnreachable(f"Ollama server not reachable at {self.host}: {exc.strerror or exc}") from exc

    def _json(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        data = json.dumps(payload).encode("utf-8") if payload is not None else None
        conn, resp = self._send(method, path, data, {"Content-Type": "application/json"} if data else None)
        try:
            body = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            return resp.status, _error_text(body)
        try:
            return resp.status, json.loads(body) if body else None
        except json.JSONDecodeError as exc:
            raise RegistrationError(f"Ollama {path}: the answer is not JSON") from exc

    # -- blobs ---------------------------------------------------------------------------------------
    def blob_exists(self, digest: str) -> bool:
        conn, resp = self._send("HEAD", f"/api/blobs/{digest}")
        try:
            resp.read()
        finally:
            conn.close()
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise RegistrationError(f"Ollama HEAD /api/blobs: HTTP {resp.status}")

    def upload_blob(self, path: Path, digest: str, progress: Callable[[int, int], None] | None = None) -> bool:
        """Send the file unless the server has it; True when bytes were sent."""
        if self.blob_exists(digest):
            return False
        size = path.stat().st_size
        conn = self._conn(timeout=max(self.timeout, 600))
        try:
            conn.putrequest("POST", self._prefix + f"/api/blobs/{digest}")
            conn.putheader("Content-Length", str(size))
            conn.putheader("Content-Type", "application/octet-stream")
            conn.endheaders()
            done = 0
            with path.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    conn.send(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, size)
            resp = conn.getresponse()
            body = resp.read()
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise ServerUnreachable(f"upload to Ollama at {self.host} failed: {exc.strerror or exc}") from exc
        finally:
            conn.close()
        if resp.status >= 400:
            raise RegistrationError(f"Ollama refused the upload of {path.name}: HTTP {resp.status}: {_error_text(body)}")
        return True

    # -- models --------------------------------------------------------------------------------------
    def show(self, name: str) -> dict[str, Any] | None:
        """``/api/show``; None when the model does not exist."""
        status, doc = self._json("POST", "/api/show", {"model": name})
        if status == 404:
            return None
        if status >= 400:
            raise RegistrationError(f"Ollama /api/show {name}: HTTP {status}: {doc}")
        return doc if isinstance(doc, dict) else {}

    def create(self, body: dict[str, Any], on_status: Callable[[str], None] | None = None) -> list[str]:
        """``/api/create``, following its stream; raises on an error line or status."""
        conn, resp = self._send("POST", "/api/create", json.dumps(body).encode("utf-8"),
                                {"Content-Type": "application/json"}, timeout=max(self.timeout, 1800))
        statuses: list[str] = []
        try:
            if resp.status >= 400:
                raise RegistrationError(f"Ollama could not create {body.get('model')}: HTTP {resp.status}: "
                                        f"{_error_text(resp.read())}")
            for raw in resp:
                line = raw.strip()
                if not line:
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(doc, dict) and doc.get("error"):
                    raise RegistrationError(f"Ollama could not create {body.get('model')}: {doc['error']}")
                status = str(doc.get("status", "")) if isinstance(doc, dict) else ""
                if status:
                    statuses.append(status)
                    if on_status is not None:
                        on_status(status)
        except (ConnectionError, TimeoutError) as exc:
            raise ServerUnreachable(f"Ollama closed the connection during create: {exc}") from exc
        finally:
            conn.close()
        if not statuses or statuses[-1] != "success":
            raise RegistrationError(f"Ollama did not confirm the creation of {body.get('model')} "
                                    f"(last status: {statuses[-1] if statuses else 'none'})")
        return statuses


def register_export(
    host: str,
    name: str,
    spec: ModelfileSpec,
    *,
    model_path: Path | None = None,
    adapter_path: Path | None = None,
    force: bool = False,
    on_status: Callable[[RegisterStatus], None] | None = None,
) -> RegistrationResult:
    """Upload the files, create the model, and check it with ``/api/show``.

    ``model_path``: the merged GGUF (``files``); or ``adapter_path`` alone, on top of ``spec.from_`` (an
    existing Ollama model). Raises ``NameClash`` when ``name`` exists and ``force`` is false.
    """
    name = validate_name(name)
    emit = on_status or (lambda s: None)
    reg = OllamaRegistrar(host)
    if not force and reg.show(name) is not None:
        raise NameClash(name)
    result = RegistrationResult(full_name(name))
    files: dict[str, str] = {}
    adapters: dict[str, str] = {}
    for path, target in ((model_path, files), (adapter_path, adapters)):
        if path is None:
            continue
        emit(RegisterStatus("upload", f"hashing {path.name}"))
        digest = file_digest(path, lambda d, t, p=path: emit(RegisterStatus("hash", f"hashing {p.name}", d, t)))
        sent = reg.upload_blob(path, digest, lambda d, t, p=path: emit(RegisterStatus("upload", f"uploading {p.name}", d, t)))
        (result.uploaded if sent else result.skipped).append(digest)
        emit(RegisterStatus("upload", f"{path.name}: {'uploaded' if sent else 'already on the server, skipped'}"))
        target[path.name] = digest
    body = spec.create_request(name, files or None, adapters or None)
    result.statuses = reg.create(body, lambda s: emit(RegisterStatus("create", s)))
    emit(RegisterStatus("check", f"checking {name} with /api/show"))
    shown = reg.show(name)
    if shown is None:
        raise RegistrationError(f"Ollama reported success but does not show {name}")
    if spec.template is not None and shown.get("template") not in (None, spec.template):
        raise RegistrationError(f"Ollama stored a different template for {name} than the one sent")
    result.show = shown
    emit(RegisterStatus("check", f"registered as {result.name}"))
    return result
