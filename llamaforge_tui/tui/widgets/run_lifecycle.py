"""The Train pane's run lifecycle: start a run in a thread worker, follow a run folder, stop before quitting.

A mixin of ``TrainPane`` (it uses the pane's state, widgets and messages): the pane is the layout, the
actions and the events -> screen path; this is where runs come from. A run is stopped by setting its
worker's ``cancelled_event``, which the core trainer polls between steps; the worker itself is never
cancelled, so the run writes its checkpoint and the worker ends normally.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import work
from textual.worker import Worker, WorkerState, get_current_worker

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.train.config import TrainConfig
from llamaforge_tui.core.train.events import BatchingEmit, EventReader
from llamaforge_tui.tui.widgets.eval_table import EvalTable
from llamaforge_tui.tui.widgets.log_panel import LogPanel
from llamaforge_tui.tui.widgets.run_form import RunForm
from llamaforge_tui.tui.widgets.run_state import RUNNING, STOPPING, RunState
from llamaforge_tui.tui.widgets.runs_list import RunsList

TrainFn = Callable[..., Any]  # core.trainer.run(config, emit, stop_event, *, resume_from, settings)
EVENT_BATCH_SECONDS = 0.5  # a local run's steps reach the UI in batches this far apart, at most


class RunLifecycle:
    """Needs from the pane: ``state``, ``train_worker``, ``follow_worker``, ``attached_dir``, ``quit_after_stop``,
    ``_dirty``, ``run_active``, ``_refresh_monitor``, ``action_stop``, ``EventsArrived`` and the DOM node API."""

    def guard_quit(self) -> bool:
        """Called by the app's quit action. True when a run is active: we ask first, and own the quit."""
        if not self.run_active:
            return False
        from llamaforge_tui.tui.screens.confirm_quit import ConfirmQuit

        if self.quit_after_stop:
            self.notify("Stopping the run; the app quits when its checkpoint is written.", title="Quitting")
            return True
        if isinstance(self.app.screen, ConfirmQuit):
            return True

        def answered(stop_and_quit: bool | None) -> None:
            if stop_and_quit:
                self.quit_after_stop = True
                self.action_stop()

        self.app.push_screen(ConfirmQuit(self.state.run_id or "starting"), answered)
        return True

    # -- training --------------------------------------------------------------------------------
    def _launch(self, config: TrainConfig, *, resume_from: Path | None) -> None:
        self._stop_following()
        self.state = RunState()
        if resume_from is not None:  # keep the curve so far: the resumed run continues it
            for event in EventReader(resume_from).poll():
                self.state.apply(event)
        self.state.status = RUNNING
        self._dirty = True
        self.query_one(LogPanel).write_line(f"starting: {config.model} on {config.data}"
                                            + (f" (resuming {resume_from})" if resume_from else ""))
        self.train_worker = self._train(config, resume_from)

    def _train_fn(self) -> TrainFn:
        services = getattr(self.app, "services", None)
        fn = getattr(services, "extra", {}).get("train_run") if services is not None else None
        if fn is None:
            from llamaforge_tui.core.train.trainer import run as fn
        return fn

    @work(thread=True, group="training", name="training", description="LoRA training run", exit_on_error=False)
    def _train(self, config: TrainConfig, resume_from: Path | None) -> Any:
        worker = get_current_worker()
        # Batched: a fast run (tens of steps a second) wakes the UI a few times a second, not once per step;
        # every event still arrives, in order, and start/checkpoint/end events at once.
        emit = BatchingEmit(lambda events: self.post_message(self.EventsArrived(events, origin="local")),
                            interval=EVENT_BATCH_SECONDS)
        try:
            return self._train_fn()(config, emit, worker.cancelled_event, resume_from=resume_from,
                                    settings=self.app.settings)
        finally:
            emit.flush()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self.train_worker or event.state in (WorkerState.PENDING, WorkerState.RUNNING):
            return
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            if not self.state.ended:
                self.state.status = "failed"
            text = str(error) if isinstance(error, LlamaForgeError) else f"{type(error).__name__}: {error}"
            self.query_one(LogPanel).write_line(f"run failed: {text}")  # the app's handler notifies
        elif self.state.status in (RUNNING, STOPPING):  # ended without a terminal event
            self.state.status = "stopped"
        self._dirty = True
        self._refresh_monitor()
        self.query_one(RunsList).reload()
        self.query_one(EvalTable).show_run(self.current_run_dir)  # its end-of-run evaluation
        if self.quit_after_stop:
            self.app.exit()

    # -- attach ----------------------------------------------------------------------------------
    def attach(self, run_dir: Path | str) -> None:
        """Show a run folder: its history, then its new events as they are written."""
        if self.run_active:
            self.notify("A run is training here; the monitor stays on it.", severity="warning")
            return
        self._stop_following()
        self.attached_dir = Path(run_dir)
        self.state = RunState(run_dir=str(self.attached_dir), run_id=self.attached_dir.name)
        self._dirty = True
        self.query_one(LogPanel).clear()
        config_file = self.attached_dir / "config.toml"
        if config_file.is_file():  # show what the run was started with (and start a variant from there)
            try:
                self.query_one(RunForm).load_config(TrainConfig.from_file(config_file))
            except LlamaForgeError as exc:
                self.query_one(LogPanel).write_line(f"cannot read the run's config: {exc}")
        self.follow_worker = self._follow(self.attached_dir)
        self.query_one(EvalTable).show_run(self.attached_dir)

    def _stop_following(self) -> None:
        if self.follow_worker is not None:
            self.follow_worker.cancel()
            self.follow_worker = None
        self.attached_dir = None

    @work(thread=True, group="monitor", name="follow-events", description="Follow a run's events.jsonl",
          exit_on_error=False)
    def _follow(self, run_dir: Path, interval: float = 0.3) -> None:
        from llamaforge_tui.core.train.runs import is_locked

        worker = get_current_worker()
        reader = EventReader(run_dir)
        polls = 0
        while not worker.is_cancelled:
            events = reader.poll()
            # Every few seconds: is a process still training it? (its lock dies with it, even on SIGKILL)
            alive = is_locked(run_dir) if polls % 10 == 0 else None
            polls += 1
            if events or alive is not None:
                self.post_message(self.EventsArrived(events, origin="attached", trainer_alive=alive))
            if worker.cancelled_event.wait(interval):
                break

