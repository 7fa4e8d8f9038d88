"""One small adapter over the official ``ollama`` Python client: show, copy, delete, pull, ps, unload, chat.

Everything the app asks of a running Ollama server for model management and chat goes through
``OllamaServer``. It returns plain data (dicts and frozen dataclasses), never the client's pydantic types, and
every failure comes back as an ``OllamaServerError`` carrying the server's own message; no server at all is the
more specific ``OllamaUnavailable``, whose message says how to start one. Streams (pull, chat) are generators that
check a stop event between lines and close the HTTP stream when stopped, so the server stops working too.

Hand-written HTTP remains in ``api.py`` (a stdlib-only status probe the UI polls every few seconds, without
paying for importing httpx and pydantic) and ``register.py`` (blob uploads with byte progress, which the client's
``create_blob`` does not report).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.ollama.api import OllamaServerError, ollama_host
from llamaforge_tui.core.ollama.modelfile import parse_modelfile

if TYPE_CHECKING:
    from llamaforge_tui.core.settings import Settings

__all__ = ["ChatChunk", "OllamaServer", "OllamaServerError", "OllamaUnavailable", "PullProgress", "RunningModel"]

START_HINT = "start it with `ollama serve` (or point OLLAMA_HOST at a running server)"


class OllamaUnavailable(OllamaServerError):
    """Nothing answers at the server address. The message names the address and how to start a server."""

    def __init__(self, host: str) -> None:
        super().__init__(f"no Ollama server at {host}: {START_HINT}")
        self.host = host


@dataclass(frozen=True)
class PullProgress:
    """One line of ``/api/pull``: ``status`` plus, while a layer downloads, its digest and byte counts."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "digest": self.digest, "total": self.total, "completed": self.completed}


@dataclass(frozen=True)
class RunningModel:
    """A model the server holds in memory (``/api/ps``)."""

    name: str
    size_bytes: int
    vram_bytes: int
    expires_at: str | None  # ISO 8601, as the server gives it

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size_bytes": self.size_bytes, "vram_bytes": self.vram_bytes,
                "expires_at": self.expires_at}


@dataclass(frozen=True)
class ChatChunk:
    """A piece of a streamed answer. The last one has ``done`` and the server's counts (durations in ns)."""

    content: str
    done: bool = False
    done_reason: str | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    total_duration: int | None = None
    load_duration: int | None = None

    @property
    def tokens_per_second(self) -> float | None:
        if self.eval_count and self.eval_duration:
            return self.eval_count / (self.eval_duration / 1e9)
        return None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


class OllamaServer:
    """A handle on one Ollama server. Cheap to build; the HTTP clients are made on first use.

    ``timeout`` bounds quick calls (show, copy, delete, ps); streams get ``stream_timeout`` between lines, since
    a model load before the first chat token or a slow registry can take minutes.
    """

    def __init__(self, host: str | None = None, *, settings: Settings | None = None, timeout: float = 30.0,
                 stream_timeout: float = 600.0) -> None:
        self.host = host or ollama_host(settings)
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def _client(self, kind: str = "quick") -> Any:
        with self._lock:
            client = self._clients.get(kind)
            if client is None:
                import httpx
                import ollama

                read = self.timeout if kind == "quick" else self.stream_timeout
                client = ollama.Client(host=self.host, timeout=httpx.Timeout(read, connect=min(self.timeout, 5.0)))
                self._clients[kind] = client
            return client

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """The client's and httpx's exceptions -> ours, with the server's message and what we were doing."""
        import httpx
        import ollama

        try:
            yield
        except ollama.ResponseError as exc:
            raise OllamaServerError(f"Ollama {action}: {exc.error}") from None
        except ollama.RequestError as exc:
            raise OllamaServerError(f"Ollama {action}: {exc.error}") from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise OllamaUnavailable(self.host) from exc
        except ConnectionError as exc:  # the client's own "Failed to connect to Ollama" (a builtin ConnectionError)
            raise OllamaUnavailable(self.host) from exc
        except httpx.TimeoutException as exc:
            raise OllamaServerError(f"Ollama {action}: no answer from {self.host} in time ({exc.__class__.__name__})") from exc
        except httpx.HTTPError as exc:
            raise OllamaServerError(f"Ollama {action}: connection to {self.host} failed: {exc}") from exc
        except ValueError as exc:  # a line that is not JSON, or not the shape the client expects
            raise OllamaServerError(f"Ollama {action}: unexpected answer from {self.host}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def __enter__(self) -> OllamaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- quick calls ------------------------------------------------------------------------------------------------
    def show(self, name: str) -> dict[str, Any]:
        """``/api/show``: ``{modelfile, template, system, parameters, license, details, model_info, capabilities,
        modified_at}``. The client's response type drops ``system``, so it is read back from the Modelfile."""
        with self._errors(f"show {name}"):
            doc = self._client().show(name)
        modelfile = doc.modelfile or ""
        system = None
        if modelfile:
            with contextlib.suppress(ValueError, IndexError):
                system = parse_modelfile(modelfile).get("system")
        details = doc.details.model_dump(exclude_none=True) if doc.details is not None else {}
        return {
            "modelfile": modelfile, "template": doc.template or "", "system": system or "",
            "parameters": doc.parameters or "", "license": doc.license or "", "details": details,
            "model_info": dict(doc.modelinfo or {}), "capabilities": list(doc.capabilities or []),
            "modified_at": _iso(doc.modified_at),
        }

    def copy(self, source: str, destination: str) -> None:
        with self._errors(f"copy {source} -> {destination}"):
            self._client().copy(source, destination)

    def delete(self, name: str) -> None:
        with self._errors(f"delete {name}"):
            self._client().delete(name)

    def ps(self) -> list[RunningModel]:
        with self._errors("ps"):
            doc = self._client().ps()
        return [RunningModel(name=str(m.model or m.name or "?"), size_bytes=int(m.size or 0),
                             vram_bytes=int(m.size_vram or 0), expires_at=_iso(m.expires_at)) for m in doc.models]

    def unload(self, name: str) -> None:
        """Drop a model from memory now: a chat request with no messages and ``keep_alive: 0``."""
        with self._errors(f"unload {name}"):
            self._client().chat(model=name, messages=[], keep_alive=0)

    def tags(self) -> list[str]:
        with self._errors("list"):
            return [str(m.model) for m in self._client().list().models if m.model]

    # -- streams ----------------------------------------------------------------------------------------------------
    def pull(self, name: str, stop_event: threading.Event | None = None, *, insecure: bool = False
             ) -> Iterator[PullProgress]:
        """``/api/pull``, one ``PullProgress`` per line. An ``{"error": ...}`` line raises ``OllamaServerError`` with
        the server's message. When ``stop_event`` is set the stream is closed and the generator ends quietly:
        the caller checks the event to tell a cancel from a finished pull (whose last line is ``success``)."""
        with self._errors(f"pull {name}"):
            stream = self._client("stream").pull(name, insecure=insecure, stream=True)
            try:
                for part in stream:
                    if stop_event is not None and stop_event.is_set():
                        return
                    yield PullProgress(status=str(part.status or ""), digest=part.digest,
                                       total=part.total, completed=part.completed)
                    if stop_event is not None and stop_event.is_set():
                        return
            finally:
                stream.close()

    def chat_stream(self, model: str, messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any] | None = None,
                    stop_event: threading.Event | None = None, *, keep_alive: float | str | None = None
                    ) -> Iterator[ChatChunk]:
        """``/api/chat`` streamed: text pieces, then a ``done`` chunk with ``eval_count``/``eval_duration``.
        Setting ``stop_event`` closes the stream (the server then stops generating) and ends the generator."""
        with self._errors(f"chat {model}"):
            stream = self._client("stream").chat(model=model, messages=[dict(m) for m in messages], stream=True,
                                                 options=dict(options) if options else None, keep_alive=keep_alive)
            try:
                for part in stream:
                    if stop_event is not None and stop_event.is_set():
                        return
                    message = part.message
                    yield ChatChunk(content=(message.content or "") if message is not None else "",
                                    done=bool(part.done), done_reason=part.done_reason, eval_count=part.eval_count,
                                    eval_duration=part.eval_duration, prompt_eval_count=part.prompt_eval_count,
                                    prompt_eval_duration=part.prompt_eval_duration,
                                    total_duration=part.total_duration, load_duration=part.load_duration)
            finally:
                stream.close()
