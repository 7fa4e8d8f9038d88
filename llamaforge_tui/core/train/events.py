"""Training events: frozen dataclasses, serialised one JSON object per line to ``<run>/events.jsonl``.

The trainer core emits these through its ``emit`` callback; the CLI prints them, the TUI draws them,
and the run folder records them so a monitor can follow (or replay) a run started elsewhere.
Every event has a ``type`` (its class name) and ``time`` (UNIX seconds) when serialised.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
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
    # Where and how it trains, and why (core.train.device); empty in runs recorded before these existed.
    device: str = ""  # "cuda:0", "mps", "cpu"
    backend: str = ""  # "cuda", "rocm", "mps" or "cpu"
    device_reason: str = ""
    precision: str = ""  # e.g. "bfloat16 autocast, fp32 LoRA/optimizer/loss"
    precision_reason: str = ""


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
class EvalSummary(Event):
    """Base vs tuned after the last step (``train --eval-at-end``): the same masked loss with the adapter off
    and on. ``split`` is "eval" (held-out examples) or "train" (the training data: memorization)."""

    step: int
    split: str
    base_loss: float | None
    tuned_loss: float | None
    base_perplexity: float | None
    tuned_perplexity: float | None
    tokens: int = 0
    examples: int = 0


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
    cls.__name__: cls for cls in (RunStarted, StepLogged, EvalLogged, EvalSummary, CheckpointSaved, LogLine,
                                  RunFinished, RunFailed)
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


class BatchingEmit:
    """An ``emit`` that hands events on in batches: a consumer on another thread (a UI) gets at most one
    wake-up per ``interval`` from a fast run, instead of one per step.

    Steps and log lines wait in a buffer until ``interval`` has passed since the last batch; any other
    event (start, eval, checkpoint, end, failure) sends the buffer at once, itself included. Nothing is
    dropped or reordered. A run slower than one step per ``interval`` sends every step as it comes. A timer
    thread sends a buffer nobody else has sent within ``interval`` (the last steps before a long eval or
    checkpoint write still show at once); ``send`` may therefore be called from that thread too, always
    under one lock, so batches go out one at a time and in order. Call ``flush()`` when the run returns or
    raises, for whatever is still buffered.
    """

    BUFFERED: ClassVar[tuple[type[Event], ...]] = (StepLogged, LogLine)

    def __init__(self, send: Callable[[list[Event]], None], interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic, *, timer: bool = True) -> None:
        self._send = send
        self._interval = interval
        self._clock = clock
        self._use_timer = timer
        self._buffer: list[Event] = []
        self._last_sent = float("-inf")
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._buffer.append(event)
            now = self._clock()
            if not isinstance(event, self.BUFFERED) or now - self._last_sent >= self._interval:
                self._send_locked(now)
            elif self._use_timer and self._timer is None:
                self._timer = threading.Timer(max(0.0, self._interval - (now - self._last_sent)), self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            if self._buffer:
                self._send_locked(self._clock())

    def _send_locked(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()  # a no-op when it is the timer's own thread sending
            self._timer = None
        batch, self._buffer = self._buffer, []
        self._last_sent = now
        self._send(batch)
