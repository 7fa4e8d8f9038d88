"""One run's details (``enter`` in the Runs tab): config, source, status, losses, speed, duration, checkpoints,
exports with their verification and registered names, eval, and the folder's size. From here: attach the
monitor (``a``), prune checkpoints (``p``) or delete the run (``x``); the Runs list carries those out."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.train.run_details import RunDetails, detail_lines, run_details


def details_text(details: RunDetails) -> Text:
    rows = detail_lines(details)
    width = max(len(label) for label, _ in rows) + 2
    text = Text()
    for label, value in rows:
        text.append(f"{label:<{width}}", style="bold")
        text.append(value + "\n")
    return text


class RunDetailsScreen(ModalScreen[str | None]):
    """Dismisses with ``"attach"``, ``"prune"``, ``"delete"`` or None (closed)."""

    DEFAULT_CSS = """
    RunDetailsScreen {
        align: center middle;
    }
    RunDetailsScreen > Vertical {
        width: 95%;
        height: 90%;
        border: thick $primary;
        background: $surface;
    }
    RunDetailsScreen VerticalScroll {
        padding: 0 1;
    }
    """

    BINDINGS = [
        Binding("a", "choose('attach')", "Attach monitor", id="run_details.attach"),
        Binding("p", "choose('prune')", "Prune checkpoints", id="run_details.prune"),
        Binding("x,delete", "choose('delete')", "Delete run", id="run_details.delete"),
        Binding("escape,q", "choose(None)", "Close", id="run_details.close"),
    ]

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.details: RunDetails | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            with VerticalScroll(id="run-details-scroll"):
                yield Static(Text(f"Reading {self.run_dir}…"), id="run-details-text", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#run-details-scroll", VerticalScroll).focus()
        self._load()

    @work(thread=True, group="run-details", name="runs.details", description="Reading a run's details",
          exit_on_error=False)
    def _load(self) -> None:
        try:
            details = run_details(self.run_dir)
        except (LlamaForgeError, OSError) as exc:
            self.app.call_from_thread(self._show, Text(f"Cannot read {self.run_dir}: {exc}"))
            return
        self.details = details
        self.app.call_from_thread(self._show, details_text(details))

    def _show(self, text: Text) -> None:
        self.query_one("#run-details-text", Static).update(text)

    def action_choose(self, choice: str | None) -> None:
        self.dismiss(choice)
