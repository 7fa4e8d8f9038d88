"""Shared helpers for the Train pane tests: waiting on conditions, scripted fake trainers, screen text."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot

from llamaforge_tui.core.train.events import RunFinished, RunStarted, StepLogged


async def wait_for(pilot: Pilot, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Let the app run until ``predicate()`` holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await pilot.pause(0.05)


async def wait_for_training(pilot: Pilot, app: App, timeout: float = 120.0) -> None:
    """Wait until no 'training' worker is pending or running (the endless GPU sampler is skipped)."""
    def idle() -> bool:
        return not any(w.group == "training" and not w.is_finished for w in app.workers)
    await wait_for(pilot, idle, timeout, "the training worker to finish")
    await pilot.pause(1.2)  # let the last posted events and the monitor's refresh timer (1 s) run


async def show_train(app: App, pilot: Pilot) -> None:
    """Switch to the Train tab (not by key: another pane's focused input may take the key), once the app
    has finished mounting (the app's focus hook queries the tab panes, which may not be there yet)."""
    await wait_for(pilot, lambda: bool(app.query("#train-pane")) and app.query_one("#train-pane").is_mounted,
                   what="the app mounted")
    await pilot.pause()
    app.action_show_pane("train")
    await pilot.pause()


def screen_text(app: App) -> str:
    """What the terminal shows, as plain text (for assertions and README captures)."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)


class FakeTrainer:
    """A stand-in for ``core.trainer.run`` that emits real event objects on a schedule.

    ``gate``: when set, each step waits for it (so a test can hold a run "active"). ``allow``: a semaphore,
    one permit per step (so a test can let exactly N steps run, then hold the run). ``calls`` records
    each call's ``resume_from``, ``stop_event`` and the thread it ran on.
    """

    def __init__(self, total: int = 10, step_seconds: float = 0.01, gate: threading.Event | None = None,
                 checkpoint_seconds: float = 0.2, run_dir: Path | None = None,
                 allow: threading.Semaphore | None = None) -> None:
        self.allow = allow
        self.run_dir = run_dir
        self.total = total
        self.checkpoint_seconds = checkpoint_seconds
        self.step_seconds = step_seconds
        self.gate = gate
        self.calls: list[dict[str, Any]] = []
        self.running = threading.Event()

    def __call__(self, config: Any, emit: Callable[[Any], None], stop_event: threading.Event, *,
                 resume_from: Path | None = None, **kwargs: Any) -> str:
        self.calls.append({"resume_from": resume_from, "kwargs": kwargs, "stop_event": stop_event,
                           "thread": threading.current_thread().name, "config": config})
        start = 0 if resume_from is None else 3
        run_dir = Path(resume_from or self.run_dir or "/tmp/fake-run")
        if resume_from is None and self.run_dir is not None:  # as the real trainer: the config beside the run
            run_dir.mkdir(parents=True, exist_ok=True)
            config.to_file(run_dir / "config.toml")
        emit(RunStarted(run_id="fake-run", run_dir=str(run_dir), config={}, source={},
                        total_steps=self.total, trainable_params=10, total_params=100, resumed_from_step=start))
        self.running.set()
        try:
            for step in range(start + 1, self.total + 1):
                while self.gate is not None and not self.gate.wait(0.02):
                    if stop_event.is_set():
                        break
                while self.allow is not None and not self.allow.acquire(timeout=0.02):
                    if stop_event.is_set():
                        break
                if stop_event.is_set():
                    time.sleep(self.checkpoint_seconds)  # "writing the checkpoint"
                    emit(RunFinished(step=step - 1, total_steps=self.total, stopped=True, final_loss=1.0,
                                     adapter_path=None, elapsed_seconds=1.0))
                    return "stopped"
                time.sleep(self.step_seconds)
                emit(StepLogged(step=step, total_steps=self.total, epoch=step / self.total, loss=4.0 / step,
                                lr=1e-4, grad_norm=0.5, tokens_per_second=1000.0, elapsed_seconds=step * 0.01,
                                eta_seconds=(self.total - step) * 0.01, tokens=64))
            emit(RunFinished(step=self.total, total_steps=self.total, stopped=False, final_loss=4.0 / self.total,
                             adapter_path="/tmp/fake-run/adapter", elapsed_seconds=1.0))
            return "finished"
        finally:
            self.running.clear()
