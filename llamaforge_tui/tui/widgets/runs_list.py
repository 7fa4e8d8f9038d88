"""The Runs list: run folders under the runs dir, newest first; Enter shows a run's details, a attaches the monitor.
The eval column sums up each run's last evaluation (eval.json)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.message import Message
from textual.widgets import DataTable

from llamaforge_tui.core.train.runs import RunSummary, list_runs
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui.widgets.runs_actions import RUNS_BINDINGS, RunsActions


class RunsList(RunsActions, DataTable):
    """Enter: details; a: attach; space/v: mark and compare; x: delete; p: prune (see ``runs_actions``)."""

    BINDINGS = RUNS_BINDINGS

    class RunChosen(Message):
        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    class RunHighlighted(Message):
        """The cursor moved onto a run (the pane shows its evaluation)."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    class Loaded(Message):
        def __init__(self, runs: list[RunSummary], evals: dict[str, str] | None = None) -> None:
            super().__init__()
            self.runs = runs
            self.evals = evals or {}  # run path -> eval column text

    def __init__(self, settings: Settings, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.settings = settings
        self.runs: list[RunSummary] = []
        self.marked: list[Path] = []

    def on_mount(self) -> None:
        self.add_columns("run", "status", "eval", "step", "loss")  # eval before the numbers: visible in 52 columns
        self.reload()

    def reload(self) -> None:
        """Re-read the runs folder (in a thread: a folder of many runs reads many event files)."""
        self._load()

    @work(thread=True, group="runs-list", name="list-runs", description="List training runs",
          exclusive=True, exit_on_error=False)
    def _load(self) -> None:
        from llamaforge_tui.core.infer.eval_format import headline
        from llamaforge_tui.core.infer.evaluate import read_eval

        runs = list_runs(self.settings)
        self.post_message(self.Loaded(runs, {str(r.path): headline(read_eval(r.path)) for r in runs}))

    def on_runs_list_loaded(self, message: Loaded) -> None:
        message.stop()
        before = self.current_run()  # the cursor stays on its run across a reload (the pane shows its eval)
        self.runs = message.runs
        self.clear()
        for run in self.runs:
            loss = "-" if run.final_loss is None else f"{run.final_loss:.4f}"
            self.add_row(Text(run.run_id), Text(run.status), Text(message.evals.get(str(run.path), "-")),
                         Text(f"{run.step}/{run.total_steps}"), Text(loss), key=str(run.path))
        self.apply_marks()
        keys = [r.path for r in self.runs]
        if before in keys:
            self.move_cursor(row=keys.index(before))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value:
            self.post_message(self.RunHighlighted(Path(event.row_key.value)))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value:
            self.show_details(Path(event.row_key.value))


def started_text(run: RunSummary) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started)) if run.started else "?"
