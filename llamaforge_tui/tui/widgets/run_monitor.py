"""The Train pane's monitor: a run's title, progress bar, stats, loss chart, system gauges and log.

It draws a ``RunState`` it is handed (``show``) and logs the events worth a line (``record``); it owns
no run and starts no work. ``show`` repaints only what changed: the pane calls it once a second while
a run trains, and every repaint costs the training run CPU.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from llamaforge_tui.core.infer.eval_format import summary_line
from llamaforge_tui.core.train.events import EvalSummary, Event, LogLine, RunFailed, RunFinished
from llamaforge_tui.tui.widgets.gpu_gauges import GpuGauges
from llamaforge_tui.tui.widgets.log_panel import LogPanel
from llamaforge_tui.tui.widgets.loss_chart import LossChart
from llamaforge_tui.tui.widgets.metric_chart import METRICS, MetricChart
from llamaforge_tui.tui.widgets.run_state import (
    IDLE,
    STATUSES,
    STOPPING,
    RunState,
    progress_line,
    stats_line,
)

STATE_CLASSES = tuple(f"-{status}" for status in STATUSES)
COMPACT_HEIGHT = 28  # rows: below it the grad-norm/LR chart waits behind g, in the log panel's place
IDLE_TITLE = "No run yet: fill in the form and press t, or pick one under Runs."


class RunMonitor(Vertical):
    def __init__(self, *, gpu_sampler: Any = None, id: str | None = None, **kwargs: Any) -> None:
        super().__init__(id=id, **kwargs)
        self._gpu_sampler = gpu_sampler
        self._shown_text: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Static(IDLE_TITLE, id="run-title", markup=False)
        yield Static("", id="run-progress", markup=False)
        yield Static("", id="run-stats", markup=False)
        yield LossChart(id="loss-chart")
        yield MetricChart(id="metric-chart")
        yield GpuGauges(id="gauges", gpu_sampler=self._gpu_sampler)
        yield LogPanel(id="log-panel")

    # -- events -> log ---------------------------------------------------------------------------
    def record(self, event: Event, *, local: bool) -> None:
        """Log an event worth a line; a local run's end is also notified (the user may be on another tab)."""
        panel = self.query_one(LogPanel)
        if isinstance(event, LogLine):
            panel.write_event(event)
        elif isinstance(event, EvalSummary):  # the end-of-run base vs tuned (train --eval-at-end)
            panel.write_line(summary_line(event))
        elif isinstance(event, RunFinished):
            line = (f"run {'stopped' if event.stopped else 'finished'} at step {event.step}"
                    + (f"; adapter: {event.adapter_path}" if event.adapter_path else ""))
            panel.write_line(line)
            if local:
                self.notify(line, title="Training", markup=False)
        elif isinstance(event, RunFailed):
            panel.write_line(f"run failed ({event.kind}): {event.reason}")
            if local:
                self.notify(event.reason, title="Training failed", severity="error", markup=False)

    # -- state -> screen -------------------------------------------------------------------------
    def _set_text(self, selector: str, text: str) -> None:
        """Update a Static only when its text changed: every update repaints it."""
        if self._shown_text.get(selector) != text:
            self._shown_text[selector] = text
            self.query_one(selector, Static).update(Text(text), layout=False)  # fixed size: no layout pass

    def show(self, state: RunState, run_active: bool) -> None:
        # The status class goes on the title, not the pane: a class change on the pane restyles every
        # widget in it (hundreds of ms on a busy CPU), and only the title's colour depends on it.
        title_widget = self.query_one("#run-title", Static)
        wanted = f"-{state.status}"
        if not title_widget.has_class(wanted):
            title_widget.remove_class(*STATE_CLASSES)
            title_widget.add_class(wanted)
        title = {IDLE: IDLE_TITLE,
                 STOPPING: "stopping… (finishing the current step and writing a checkpoint)"}.get(state.status)
        if title is None:
            where = f"{state.run_id}" if state.run_id else "run"
            title = f"{where}: {state.status}"
            if state.failed is not None:
                title += f" - {state.failed.reason}"
        elif state.status == STOPPING and state.run_id:
            title = f"{state.run_id}: {title}"
        self._set_text("#run-title", title)
        # A text bar, not Textual's ProgressBar: its labels re-lay out the whole screen at every update,
        # which on a CPU busy training took a noticeable share of the CPU from the run.
        width = self.query_one("#run-progress", Static).size.width
        self._set_text("#run-progress", progress_line(state, run_active, width))
        self._set_text("#run-stats", stats_line(state))
        self.query_one(LossChart).set_points(state.train_points, state.eval_points)
        self.query_one(MetricChart).set_series({"grad_norm": state.grad_points, "lr": state.lr_points})

    # -- chart keys (the pane's bindings call these, so they act wherever the pane's focus is) ----------
    def cycle_zoom(self) -> None:
        loss = self.query_one(LossChart)
        loss.action_cycle_zoom()
        self.query_one(MetricChart).zoom = loss.zoom

    def toggle_smooth(self) -> None:
        self.query_one(LossChart).action_toggle_smooth()

    def cycle_metric(self) -> None:
        """g: grad-norm, then the learning rate. On a short screen the small chart is hidden at first, and
        shown in the log panel's place: hidden -> grad-norm -> learning rate -> hidden."""
        chart = self.query_one(MetricChart)
        if not self.has_class("-compact"):
            chart.cycle_metric()
        elif not self.has_class("-metric-shown"):
            self.add_class("-metric-shown")
            chart.replot_now()
        elif chart.metric != METRICS[-1][0]:
            chart.cycle_metric()
        else:
            chart.cycle_metric()
            self.remove_class("-metric-shown")

    def on_resize(self) -> None:
        self.set_class(self.size.height < COMPACT_HEIGHT, "-compact")
