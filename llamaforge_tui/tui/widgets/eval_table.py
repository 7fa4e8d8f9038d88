"""The last evaluation of a run as a small base vs tuned table, and the full evaluation run in a worker.

It shows the newer of the run's ``eval.json`` (``llamaforge eval``, or an evaluation started here) and the
trainer's end-of-run ``EvalSummary`` (loss and perplexity only). Both are read in a thread: a run's events file
can be large. ``toggle()`` (key b in the Train pane) starts ``core.infer.evaluate.evaluate_run`` in a thread worker, with its progress on
one line, and called again while it runs sets the worker's ``cancelled_event``, which the core checks between
batches and between tokens (it then writes nothing). The widget owns no model: the worker loads the run and
drops it when it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static
from textual.worker import Worker, WorkerState, get_current_worker

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.infer.eval_format import (
    aligned,
    from_summary,
    split_text,
    table_rows,
)

EvaluateFn = Callable[..., Any]  # core.infer.evaluate.evaluate_run(run, settings, *, progress, stop_event)
HINT = "b evaluates base vs tuned on the run's eval data"


def load_last_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The run's eval.json or its end-of-run summary, whichever is newer; None when it has neither."""
    from llamaforge_tui.core.infer.evaluate import read_eval
    from llamaforge_tui.core.train.events import EvalSummary, read_events

    record = read_eval(run_dir)
    summaries = [e for e in read_events(run_dir) if isinstance(e, EvalSummary)]
    summary = from_summary(summaries[-1]) if summaries else None
    if record is None or (summary is not None and summary["created"] > float(record.get("created") or 0)):
        return summary
    return record


class EvalTable(Vertical):
    DEFAULT_CSS = """
    EvalTable { height: auto; max-height: 12; padding: 0 1; border-top: solid $panel; }
    EvalTable #eval-title { height: auto; text-style: bold; }
    EvalTable #eval-rows { height: auto; }
    EvalTable #eval-status { height: auto; color: $text-muted; }
    EvalTable.-running #eval-status { color: $accent; }
    """

    class Loaded(Message):
        def __init__(self, run_dir: Path, data: dict[str, Any] | None) -> None:
            super().__init__()
            self.run_dir = run_dir
            self.data = data

    class Progressed(Message):
        """Progress of the running evaluation; a newer one replaces one not yet handled."""

        def __init__(self, run_dir: Path, phase: str, message: str, elapsed: float) -> None:
            super().__init__()
            self.run_dir, self.phase, self.message, self.elapsed = run_dir, phase, message, elapsed

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, EvalTable.Progressed)

    class Finished(Message):
        """An evaluation ended: ``data`` is the new record, or None when it was cancelled or failed (``error``)."""

        def __init__(self, run_dir: Path, data: dict[str, Any] | None, *, cancelled: bool = False,
                     error: str | None = None) -> None:
            super().__init__()
            self.run_dir, self.data, self.cancelled, self.error = run_dir, data, cancelled, error

    def __init__(self, *, id: str | None = None, **kwargs: Any) -> None:
        super().__init__(id=id, **kwargs)
        self.run_dir: Path | None = None
        self.data: dict[str, Any] | None = None
        self.worker: Worker[Any] | None = None
        self.evaluating: Path | None = None  # the run being evaluated, until its worker returns

    def compose(self) -> ComposeResult:
        yield Static("Evaluation", id="eval-title", markup=False)
        yield Static("", id="eval-rows", markup=False)
        yield Static("Pick a run to see its evaluation.", id="eval-status", markup=False)

    # -- showing ---------------------------------------------------------------------------------
    def show_run(self, run_dir: Path | None) -> None:
        """Show ``run_dir``'s last evaluation (read in a thread); None clears the table."""
        self.run_dir = Path(run_dir) if run_dir else None
        if self.run_dir is None:
            self._show_data(None)
            return
        self._load(self.run_dir)

    @work(thread=True, group="eval-table", name="load-evaluation", description="Read a run's evaluation",
          exclusive=True, exit_on_error=False)
    def _load(self, run_dir: Path) -> None:
        self.post_message(self.Loaded(run_dir, load_last_evaluation(run_dir)))

    def on_eval_table_loaded(self, message: Loaded) -> None:
        message.stop()
        if message.run_dir == self.run_dir:
            self._show_data(message.data)

    def _show_data(self, data: dict[str, Any] | None) -> None:
        self.data = data
        title = "Evaluation"
        if self.run_dir is not None:
            title += f" of {self.run_dir.name}"
        rows: list[str] = []
        if data is not None:
            what = "end of training, loss only" if data.get("end_of_run") else f"{data.get('generated', 0)} answered"
            title += f" ({split_text(data)}, {data.get('examples', '?')} examples, {what})"
            rows = aligned([("metric", "base", "tuned", "change"), *table_rows(data)])
        self.query_one("#eval-title", Static).update(Text(title))
        self.query_one("#eval-rows", Static).update(Text("\n".join(rows)))
        self.query_one("#eval-rows", Static).display = bool(rows)
        if self.evaluating is None:
            status = HINT if self.run_dir is not None else "Pick a run to see its evaluation."
            if self.run_dir is not None and data is None:
                status = f"Not evaluated yet: {HINT}."
            self._status(status)

    def _status(self, text: str) -> None:
        self.query_one("#eval-status", Static).update(Text(text))

    # -- evaluating ------------------------------------------------------------------------------
    def toggle(self, fallback: Path | None = None) -> None:
        """Start evaluating the shown run (or ``fallback``); while one runs, cancel it instead."""
        if self.evaluating is not None:
            if self.worker is not None:
                self.worker.cancelled_event.set()  # the core stops between batches/tokens and writes nothing
            self._status("cancelling… (finishing the current step)")
            return
        run_dir = self.run_dir or fallback
        if run_dir is None:
            self.notify("Pick a run under Runs first (the table shows the highlighted one).", severity="warning")
            return
        from llamaforge_tui.core.train.runs import is_locked

        if is_locked(run_dir):
            self.notify(f"{run_dir.name} is still training: evaluate it when it has finished.",
                        title="Not evaluated", severity="warning", markup=False)
            return
        if self.run_dir != run_dir:
            self.show_run(run_dir)
        self.evaluating = run_dir
        self.add_class("-running")
        self._status("evaluating: loading the run… (b cancels)")
        self.worker = self._evaluate(run_dir)

    def _evaluate_fn(self) -> EvaluateFn:
        services = getattr(self.app, "services", None)
        fn = getattr(services, "extra", {}).get("evaluate_run") if services is not None else None
        if fn is None:
            from llamaforge_tui.core.infer.evaluate import evaluate_run as fn
        return fn

    @work(thread=True, group="evaluation", name="evaluate-run", description="Evaluate a run (base vs tuned)",
          exit_on_error=False)
    def _evaluate(self, run_dir: Path) -> None:
        from llamaforge_tui.core.infer.evaluate import EvalCancelled

        worker = get_current_worker()

        def progress(p: Any) -> None:
            self.post_message(self.Progressed(run_dir, p.phase, p.message, p.elapsed))

        try:
            result = self._evaluate_fn()(run_dir, self.app.settings, progress=progress,
                                         stop_event=worker.cancelled_event)
        except EvalCancelled:
            self.post_message(self.Finished(run_dir, None, cancelled=True))
        except LlamaForgeError as exc:
            self.post_message(self.Finished(run_dir, None, error=str(exc)))
        else:
            self.post_message(self.Finished(run_dir, result.to_dict()))

    def on_eval_table_progressed(self, message: Progressed) -> None:
        message.stop()
        if message.run_dir == self.evaluating:
            minutes, seconds = divmod(int(message.elapsed), 60)
            self._status(f"evaluating {minutes}:{seconds:02d}: {message.message} (b cancels)")

    def on_eval_table_finished(self, message: Finished) -> None:
        """Shown here, then left to bubble: the pane refreshes the runs list's eval column."""
        self._done()
        if message.error is not None:
            self.notify(message.error, title="Evaluation failed", severity="error", markup=False)
        elif message.cancelled:
            self.notify("Evaluation cancelled; nothing was written.", title="Evaluation")
        else:
            self.notify(f"{message.run_dir.name}: evaluation saved to eval.json", title="Evaluation", markup=False)
        if message.run_dir == self.run_dir:
            self._show_data(message.data if message.data is not None else self.data)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A bug in the worker (not a LlamaForgeError) ends it in ERROR: the app notifies, we reset."""
        if event.worker is self.worker and event.state in (WorkerState.ERROR, WorkerState.CANCELLED):
            self._done()
            self._show_data(self.data)

    def _done(self) -> None:
        self.evaluating = None
        self.worker = None
        self.remove_class("-running")
