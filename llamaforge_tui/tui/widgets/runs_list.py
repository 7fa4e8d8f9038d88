"""The Runs list: run folders under the runs dir, newest first; Enter shows a run's details, a attaches the monitor."""

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

    class Loaded(Message):
        def __init__(self, runs: list[RunSummary]) -> None:
            super().__init__()
            self.runs = runs

    def __init__(self, settings: Settings, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.settings = settings
        self.runs: list[RunSummary] = []
        self.marked: list[Path] = []

    def on_mount(self) -> None:
        self.add_columns("run", "status", "step", "loss")
        self.reload()

    def reload(self) -> None:
        """Re-read the runs folder (in a thread: a folder of many runs reads many event files)."""
        self._load()

    @work(thread=True, group="runs-list", name="list-runs", description="List training runs",
          exclusive=True, exit_on_error=False)
    def _load(self) -> None:
        self.post_message(self.Loaded(list_runs(self.settings)))

    def on_runs_list_loaded(self, message: Loaded) -> None:
        message.stop()
        self.runs = message.runs
        self.clear()
        for run in self.runs:
            loss = "-" if run.final_loss is None else f"{run.final_loss:.4f}"
            self.add_row(Text(run.run_id), Text(run.status), Text(f"{run.step}/{run.total_steps}"), Text(loss),
                         key=str(run.path))
        self.apply_marks()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value:
            self.show_details(Path(event.row_key.value))


def started_text(run: RunSummary) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started)) if run.started else "?"
