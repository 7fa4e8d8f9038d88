"""Training events: frozen dataclasses, serialised one JSON object per line to ``<run>/events.jsonl``.

The trainer core emits these through its ``emit`` callback; the CLI prints them, the TUI draws them,
and the run folder records them so a monitor can follow (or replay) a run started elsewhere.
Every event has a ``type`` (its class name) and ``time`` (UNIX seconds) when serialised.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class Event:
    time: float = field(default_factory=_now, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {"type": type(self).__name__, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=True, default=str)


@dataclass(frozen=True)
class RunStarted(Event):
    run_id: str
    run_dir: str
    config: dict[str, Any]
    source: dict[str, Any]
    total_steps: int
    trainable_params: int
    total_params: int
    dataset: dict[str, Any] = field(default_factory=dict)
    resumed_from_step: int = 0
    world_size: int = 1


@dataclass(frozen=True)
class StepLogged(Event):
    step: int
    total_steps: int
    epoch: float
    loss: float
    lr: float
    grad_norm: float
    tokens_per_second: float
    elapsed_seconds: float
    eta_seconds: float | None
    memory_bytes: int | None = None
    tokens: int = 0


@dataclass(frozen=True)
class EvalLogged(Event):
    step: int
    eval_loss: float
    eval_tokens: int = 0


@dataclass(frozen=True)
class CheckpointSaved(Event):
    step: int
    path: str


@dataclass(frozen=True)
class LogLine(Event):
    level: str
    message: str


@dataclass(frozen=True)
class RunFinished(Event):
    step: int
    total_steps: int
    stopped: bool
    final_loss: float | None
    adapter_path: str | None
    elapsed_seconds: float


@dataclass(frozen=True)
class RunFailed(Event):
    step: int
    reason: str
    kind: str = "error"  # "oom", "nan", "error", "aborted"
    last_checkpoint: str | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls for cls in (RunStarted, StepLogged, EvalLogged, CheckpointSaved, LogLine, RunFinished, RunFailed)
}

Emit = Callable[[Event], None]


def event_from_dict(data: dict[str, Any]) -> Event:
    """Inverse of ``Event.to_dict``. Unknown extra keys (from newer versions) are ignored."""
    kind = data.get("type")
    cls = EVENT_TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown event type {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class EventLog:
    """Appends events to ``events.jsonl``, one flushed line each, so a follower sees them at once."""

    FILENAME: ClassVar[str] = "events.jsonl"

    def __init__(self, run_dir: Path | str) -> None:
        self.path = Path(run_dir) / self.FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run

    def append(self, event: Event) -> None:
        self._fh.write(event.to_json() + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno()) if isinstance(event, (CheckpointSaved, RunFinished, RunFailed)) else None

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventReader:
    """Reads ``events.jsonl`` incrementally. ``poll()`` returns the events added since the last call.

    A trailing line without its newline (a writer mid-write) is kept back until it is complete, and a
    corrupt line (e.g. after a crash) is skipped rather than stopping the reader.
    """

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        self.path = path / EventLog.FILENAME if path.is_dir() else path
        self._offset = 0
        self._pending = b""
        self.skipped_lines = 0

    def poll(self) -> list[Event]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()  # incomplete tail (b"" when data ended with a newline)
        events: list[Event] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                events.append(event_from_dict(json.loads(raw)))
            except (ValueError, TypeError):
                self.skipped_lines += 1
        return events


def read_events(run_dir: Path | str) -> list[Event]:
    return EventReader(run_dir).poll()
