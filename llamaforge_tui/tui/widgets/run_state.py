"""What the monitor knows about one run, folded from its events. Pure Python: no widgets, easy to test.

The same fold serves a run trained in this process (events arrive as messages from the worker) and a
run followed from its ``events.jsonl`` (attach mode), so both views always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llamaforge_tui.core.train.events import (
    CheckpointSaved,
    EvalLogged,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    StepLogged,
)
from llamaforge_tui.core.fsutil import human_bytes

# Status values, also used (with a leading hyphen) as CSS state classes on the pane.
IDLE, RUNNING, STOPPING, FINISHED, STOPPED, FAILED = "idle", "running", "stopping", "finished", "stopped", "failed"
INTERRUPTED = "interrupted"  # a followed run whose process died without a last event (killed, crashed)
STATUSES = (IDLE, RUNNING, STOPPING, FINISHED, STOPPED, FAILED, INTERRUPTED)
ENDED = frozenset({FINISHED, STOPPED, FAILED, INTERRUPTED})


@dataclass
class RunState:
    run_id: str | None = None
    run_dir: str | None = None
    status: str = IDLE
    total_steps: int = 0
    last_step: StepLogged | None = None
    started: RunStarted | None = None
    finished: RunFinished | None = None
    failed: RunFailed | None = None
    last_checkpoint: str | None = None
    train_points: list[tuple[int, float]] = field(default_factory=list)
    eval_points: list[tuple[int, float]] = field(default_factory=list)
    grad_points: list[tuple[int, float]] = field(default_factory=list)  # (step, gradient norm)
    lr_points: list[tuple[int, float]] = field(default_factory=list)  # (step, learning rate)
    events_seen: int = 0

    @property
    def step(self) -> int:
        if self.finished is not None:
            return self.finished.step
        return self.last_step.step if self.last_step else (self.started.resumed_from_step if self.started else 0)

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def apply(self, event: Event) -> None:
        """Fold one event in. A second ``RunStarted`` (a resume) keeps the history up to its start step."""
        self.events_seen += 1
        if isinstance(event, RunStarted):
            self.started = event
            self.run_id, self.run_dir = event.run_id, event.run_dir
            self.total_steps = event.total_steps
            self.finished = self.failed = None
            self.status = RUNNING
            keep = event.resumed_from_step
            self.train_points = [p for p in self.train_points if p[0] <= keep]
            self.eval_points = [p for p in self.eval_points if p[0] <= keep]
            self.grad_points = [p for p in self.grad_points if p[0] <= keep]
            self.lr_points = [p for p in self.lr_points if p[0] <= keep]
            if self.last_step is not None and self.last_step.step > keep:
                self.last_step = None
        elif isinstance(event, StepLogged):
            self.last_step = event
            self.total_steps = event.total_steps or self.total_steps
            self.train_points.append((event.step, event.loss))
            self.grad_points.append((event.step, event.grad_norm))
            self.lr_points.append((event.step, event.lr))
            if self.status == IDLE:  # attached mid-run, or an events file without its RunStarted
                self.status = RUNNING
        elif isinstance(event, EvalLogged):
            self.eval_points.append((event.step, event.eval_loss))
        elif isinstance(event, CheckpointSaved):
            self.last_checkpoint = event.path
        elif isinstance(event, RunFinished):
            self.finished = event
            self.total_steps = event.total_steps or self.total_steps
            self.status = STOPPED if event.stopped else FINISHED
        elif isinstance(event, RunFailed):
            self.failed = event
            self.last_checkpoint = event.last_checkpoint or self.last_checkpoint
            self.status = FAILED


def format_duration(seconds: float | None) -> str:
    """3725 -> '1:02:05'; None -> 'N/A'."""
    if seconds is None or seconds != seconds or seconds < 0:  # None, NaN, negative
        return "N/A"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        days, hours = divmod(hours, 24)
        return f"{days}d {hours}:{minutes:02d}:{secs:02d}"
    return f"{hours}:{minutes:02d}:{secs:02d}"


def stats_line(state: RunState) -> str:
    """The monitor's figures: step/total, epoch, loss, lr, grad-norm, tokens/s, elapsed, ETA, eval, memory."""
    s = state.last_step
    step_total = f"step {state.step}/{state.total_steps or '?'}"
    if s is None:
        return step_total
    parts = [
        step_total,
        f"epoch {s.epoch:.2f}",
        f"loss {s.loss:.4f}",
        f"lr {s.lr:.2e}",
        f"grad-norm {s.grad_norm:.3f}",
        f"{s.tokens_per_second:,.0f} tok/s",
        f"elapsed {format_duration(s.elapsed_seconds)}",
        f"ETA {format_duration(None if state.ended else s.eta_seconds)}",
    ]
    if state.eval_points:
        parts.append(f"eval {state.eval_points[-1][1]:.4f}")
    if s.memory_bytes:
        parts.append(f"mem {human_bytes(s.memory_bytes)}")
    return "  ".join(parts)


def progress_line(state: RunState, active: bool, width: int) -> str:
    """``━━━━━━━━╸──────────  42%  (21/50)`` sized to ``width``; "loading…" before a run knows its total."""
    if not state.total_steps:
        return "loading the model and the data…" if active else ""
    fraction = min(1.0, max(0.0, state.step / state.total_steps))
    tail = f" {fraction * 100:3.0f}%"
    cells = max(0, width - len(tail))
    done = fraction * cells
    full = int(done)
    bar = "━" * full + ("╸" if done - full >= 0.5 and full < cells else "")
    return bar + "─" * (cells - len(bar)) + tail
