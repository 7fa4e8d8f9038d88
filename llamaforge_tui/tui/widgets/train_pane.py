"""The Train pane: configure a run, train it in a thread worker, and watch it (or any run folder) live.

Everything the monitor shows is folded from training events (``RunState``), whether they come from a
run in this process (the worker posts its events as messages, batched by ``BatchingEmit`` so a fast run
wakes the UI twice a second at most, but never dropped: every step is a point on the loss curve) or from
a run folder's ``events.jsonl`` (attach mode, a follower thread). Widgets are redrawn once a second, not
once per event: the refresh follows the gauges' system sample, so the stats, the chart and the gauges
change in one frame (one screen update a second while training; a timer takes over if samples stop).

A run is stopped by setting its worker's ``cancelled_event``, which the core trainer polls between
steps; the worker itself is never cancelled, so the run writes its checkpoint and the worker ends
normally. App shutdown cancels workers, which sets the same event: the run still stops cleanly.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.train.events import Event
from llamaforge_tui.core.train.config import TrainConfig
from llamaforge_tui.tui.widgets.eval_table import EvalTable
from llamaforge_tui.tui.widgets.gpu_gauges import GpuGauges
from llamaforge_tui.tui.widgets.log_panel import LogPanel, PanelLogHandler
from llamaforge_tui.tui.widgets.run_form import ConfigFileBar, RunForm
from llamaforge_tui.tui.widgets.panes import Panes
from llamaforge_tui.tui.widgets.run_monitor import RunMonitor
from llamaforge_tui.tui.widgets.run_plan import RunPlan
from llamaforge_tui.tui.widgets.run_state import ENDED, INTERRUPTED, RUNNING, STOPPING, RunState
from llamaforge_tui.tui.widgets.run_lifecycle import RunLifecycle
from llamaforge_tui.tui.widgets.runs_list import RunsList

# Once a second is plenty for a run watched for hours, and keeps the UI's CPU away from training.
REFRESH_SECONDS = 1.0


class TrainPane(RunLifecycle, Vertical):
    BINDINGS = [
        Binding("t", "start", "Train", id="training.start"),
        Binding("s", "stop", "Stop", id="training.stop"),
        Binding("r", "resume", "Resume", id="training.resume"),
        Binding("e", "export", "Export", id="training.export"),
        Binding("z", "zoom", "Zoom chart", id="training.chart_zoom"),
        Binding("m", "smooth", "Smooth loss", id="training.chart_smooth"),
        Binding("g", "metric", "Grad/LR", id="training.chart_metric"),
        Binding("c", "edit_config", "Edit config", id="training.edit_config"),
        Binding("b", "evaluate", "Evaluate", id="training.evaluate"),
        Binding("escape", "leave_form", "Leave the form", show=False, id="training.leave_form"),
    ]

    class EventsArrived(Message):
        """Training events, from this process's run or from a followed ``events.jsonl``. Never coalesced."""

        def __init__(self, events: list[Event], *, origin: str, trainer_alive: bool | None = None) -> None:
            super().__init__()
            self.events = events
            self.origin = origin  # "local" or "attached"
            self.trainer_alive = trainer_alive  # attached: does a process hold the run's lock? None: not checked

    class ExportRequested(Message):
        """The user asked to export a finished or stopped run (the app opens the export screen)."""

        def __init__(self, run_dir: Path) -> None:
            super().__init__()
            self.run_dir = run_dir

    def __init__(self, *, monitor_run: str | Path | None = None, id: str | None = None, **kwargs: Any) -> None:
        super().__init__(id=id, **kwargs)
        self.monitor_run = Path(monitor_run) if monitor_run else None
        self.state = RunState()
        self.train_worker: Worker[Any] | None = None
        self.follow_worker: Worker[None] | None = None
        self.attached_dir: Path | None = None
        self.quit_after_stop = False
        self._dirty = True
        self._last_refresh = 0.0
        self._log_handler: PanelLogHandler | None = None
        self._form_pinned = False  # c during a run: the form stays open until the run ends

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        services = getattr(self.app, "services", None)
        with Horizontal(id="train-body"):
            with Vertical(id="train-side"):
                with Panes(id="train-side-tabs"):
                    with TabPane("Config", id="train-config-tab"):
                        yield RunForm(id="run-form")
                        yield ConfigFileBar(id="config-file-row")
                        yield RunPlan(id="run-plan")
                    with TabPane("Runs", id="train-runs-tab"):
                        yield RunsList(self.app.settings, id="runs-list")
                        yield EvalTable(id="eval-table")
                with Horizontal(id="train-buttons"):
                    yield Button(Text("Train [t]"), id="train-start", variant="success")
                    yield Button(Text("Stop [s]"), id="train-stop", variant="error")
                    yield Button(Text("Resume [r]"), id="train-resume")
                    yield Button(Text("Export [e]"), id="train-export")
            yield RunMonitor(id="train-monitor", gpu_sampler=getattr(services, "gpu_sampler", None))

    def on_mount(self) -> None:
        self._log_handler = PanelLogHandler(self.query_one(LogPanel))
        logging.getLogger("llamaforge_tui").addHandler(self._log_handler)
        if logging.getLogger().isEnabledFor(logging.DEBUG):  # --debug: libraries' warnings in the panel too
            logging.getLogger("py.warnings").addHandler(self._log_handler)
        self.set_interval(REFRESH_SECONDS, self._refresh_if_stale, name="train-monitor-refresh")
        self.watch(self.app, "selected_model", self._prefill_model)
        self.watch(self.app, "selected_dataset", self._prefill_dataset)
        self._refresh_monitor()
        if self.monitor_run is not None:
            self.attach(self.monitor_run)

    def focus_target(self) -> Widget:
        """Where the app puts the keyboard when the pane is shown: the Train button, so the pane's keys
        (t, s, r, e, z) act at once instead of typing into a form field; the chart while the form is folded."""
        if not self.query_one("#train-side").display:
            return self.query_one("#loss-chart")
        return self.query_one("#train-start", Button)

    def _fold_form(self) -> None:
        """While a run trains here the form folds away, so the monitor gets the width; c brings it back."""
        fold = self.run_active and not self._form_pinned
        side = self.query_one("#train-side")
        if side.display != fold:
            return
        focused = self.screen.focused
        side.display = not fold
        if fold and focused is not None and side in focused.ancestors_with_self:
            self.focus_target().focus()  # the keys still reach the pane

    def on_unmount(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("llamaforge_tui").removeHandler(self._log_handler)
            logging.getLogger("py.warnings").removeHandler(self._log_handler)

    def _prefill_model(self, model: Any) -> None:
        if model is not None and getattr(model, "full_name", None):
            self.query_one(RunForm).set_value("model", f"ollama:{model.full_name}")

    def _prefill_dataset(self, path: str | None) -> None:
        if path:
            self.query_one(RunForm).set_value("data", str(path))

    # -- state -----------------------------------------------------------------------------------
    @property
    def run_active(self) -> bool:
        """A run is training in this process (following another process's run does not count)."""
        return self.train_worker is not None and self.train_worker.state in (WorkerState.PENDING, WorkerState.RUNNING)

    @property
    def current_run_dir(self) -> Path | None:
        return Path(self.state.run_dir) if self.state.run_dir else self.attached_dir

    # -- actions ---------------------------------------------------------------------------------
    def action_start(self) -> None:
        if self.run_active:
            self.notify("A run is already training; stop it first (s). It keeps running.",
                        title="Not started", severity="warning")
            return
        config = self.query_one(RunForm).config()
        if config is None:
            self.notify("Fix the fields marked in the form first.", title="Not started", severity="error")
            return
        plan = self.query_one(RunPlan).plan
        if plan is not None and plan.fits is False:
            self.notify("The memory estimate says this run will not fit; starting anyway.",
                        title="Memory", severity="warning")
        self._launch(config, resume_from=None)

    def action_resume(self) -> None:
        if self.run_active:
            self.notify("A run is already training.", title="Not resumed", severity="warning")
            return
        run_dir = self.current_run_dir
        if run_dir is None or self.state.status not in ENDED:
            self.notify("Nothing to resume: resume a stopped, failed or finished run.", severity="warning")
            return
        try:
            config = TrainConfig.from_file(run_dir / "config.toml")
        except LlamaForgeError as exc:
            self.notify(str(exc), title="Cannot resume", severity="error", markup=False)
            return
        self._launch(config, resume_from=run_dir)

    def action_stop(self) -> None:
        if self.run_active and self.train_worker is not None:
            self.train_worker.cancelled_event.set()  # the trainer finishes its step, checkpoints, returns
            self.state.status = STOPPING
            self._dirty = True
            self._refresh_monitor()
        elif self.attached_dir is not None and self.state.status == RUNNING:
            from llamaforge_tui.core.train.runs import request_stop

            request_stop(self.attached_dir)
            self.notify("Asked the training process to stop after its current step.", title="Stop requested")
        else:
            self.notify("No run is training.", severity="warning")

    def action_export(self) -> None:
        run_dir = self.current_run_dir
        if run_dir is None or self.state.status not in ENDED or self.run_active:
            self.notify("Export needs a finished or stopped run.", severity="warning")
            return
        self.post_message(self.ExportRequested(run_dir))
        if not hasattr(self.app, "on_train_pane_export_requested"):  # until the export screen exists
            self.notify(f"llamaforge export {run_dir}", title="Export", markup=False)

    def action_edit_config(self) -> None:
        self._form_pinned = self.run_active
        self.query_one("#train-side").display = True
        self.query_one("#train-side-tabs", TabbedContent).active = "train-config-tab"
        self.query_one("#in-model").focus()

    def action_leave_form(self) -> None:
        """Esc in a form field: back to the buttons, where t/s/r/e act again."""
        self.focus_target().focus()

    def action_evaluate(self) -> None:
        """Base vs tuned for the highlighted run (else the monitor's); b again cancels."""
        self.query_one(EvalTable).toggle(None if self.run_active else self.current_run_dir)

    def action_zoom(self) -> None:
        self.query_one(RunMonitor).cycle_zoom()

    def action_smooth(self) -> None:
        self.query_one(RunMonitor).toggle_smooth()

    def action_metric(self) -> None:
        self.query_one(RunMonitor).cycle_metric()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        action = {"train-start": self.action_start, "train-stop": self.action_stop,
                  "train-resume": self.action_resume, "train-export": self.action_export}.get(event.button.id or "")
        if action is not None:
            event.stop()
            action()

    @on(RunForm.Changed)
    def _form_changed(self) -> None:
        self.query_one(RunPlan).schedule(self.query_one(RunForm), self.query_one(GpuGauges))

    @on(RunsList.RunHighlighted)
    def _run_highlighted(self, message: RunsList.RunHighlighted) -> None:
        self.query_one(EvalTable).show_run(message.path)

    @on(EvalTable.Finished)
    def _evaluated(self) -> None:
        self.query_one(RunsList).reload()

    @on(RunsList.RunChosen)
    def _run_chosen(self, message: RunsList.RunChosen) -> None:
        self.attach(message.path)

    # -- events -> screen ------------------------------------------------------------------------
    def on_train_pane_events_arrived(self, message: EventsArrived) -> None:
        message.stop()
        if message.origin == "attached" and self.attached_dir is None:
            return  # a late batch from a follower we already stopped
        stopping = self.state.status == STOPPING
        status_before, seen_before = self.state.status, self.state.events_seen
        monitor = self.query_one(RunMonitor)
        for event in message.events:
            self.state.apply(event)
            monitor.record(event, local=message.origin == "local")
        if stopping and not self.state.ended:
            self.state.status = STOPPING
        if message.trainer_alive is False and self.state.status == RUNNING:
            self.state.status = INTERRUPTED
            self.query_one(LogPanel).write_line(
                "no process is training this run any more (killed or crashed); resume it with r")
        elif message.trainer_alive and self.state.status == INTERRUPTED:
            self.state.status = RUNNING
        self._dirty = True
        if self.state.status != status_before or (seen_before == 0 and message.events):
            self._refresh_monitor()  # a new status, or an attached run's history: show it now, not at the tick

    def on_gpu_gauges_sampled(self, message: GpuGauges.Sampled) -> None:
        """The gauges just drew a sample: refresh the rest now, so it all lands in the same frame."""
        message.stop()
        self._refresh_monitor()

    def _refresh_if_stale(self) -> None:
        """The fallback tick, for when no samples arrive (a sampler that failed or hangs)."""
        if time.monotonic() - self._last_refresh >= 1.5 * REFRESH_SECONDS:
            self._refresh_monitor()

    def _refresh_monitor(self) -> None:
        self._last_refresh = time.monotonic()
        if not self._dirty:
            return
        self._dirty = False
        state = self.state
        if not self.run_active:
            self._form_pinned = False
        self._fold_form()
        self.query_one(RunMonitor).show(state, self.run_active)
        # Dimmed, not disabled: disabling the focused button would throw focus into the form, where the
        # next key (s, r, t) would be typed into a field instead of acting.
        ended = state.ended and not self.run_active
        available = {
            "#train-start": not self.run_active,
            "#train-stop": self.run_active or state.status == RUNNING,
            "#train-resume": ended,
            "#train-export": ended and state.status != "failed",
        }
        for selector, ok in available.items():
            self.query_one(selector, Button).set_class(not ok, "-unavailable")
