"""The models the Ollama server holds in memory (``/api/ps``): name, size, VRAM, when it unloads; ``u`` unloads."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.ollama.client import OllamaServer, RunningModel


def expires_text(value: str | None) -> str:
    if not value:
        return "-"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return value
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


class RunningModelsScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    RunningModelsScreen {
        align: center middle;
    }
    RunningModelsScreen > Vertical {
        width: 100;
        max-width: 100%;
        height: auto;
        max-height: 90%;
        padding: 1 2;
        border: thick $primary;
        background: $surface;
    }
    RunningModelsScreen DataTable {
        height: auto;
        max-height: 16;
    }
    """

    BINDINGS = [
        Binding("u", "unload", "Unload", id="running.unload"),
        Binding("r", "refresh", "Refresh", id="running.refresh"),
        Binding("escape", "close", "Close", id="running.close"),
    ]

    def __init__(self, server: OllamaServer) -> None:
        super().__init__()
        self.server = server
        self.models: list[RunningModel] = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(f"Models loaded by the Ollama server at {self.server.host}", style="bold"))
            table: DataTable[Text] = DataTable(id="running-table", cursor_type="row")
            yield table
            yield Label(Text("loading…"), id="running-status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#running-table", DataTable)
        for label in ("Name", "Size", "VRAM", "Unloads at"):
            table.add_column(label)
        table.focus()
        self.action_refresh()

    @work(thread=True, group="models-running", name="models.ps", description="Listing loaded models",
          exclusive=True, exit_on_error=False)
    def action_refresh(self) -> None:
        try:
            models = self.server.ps()
        except LlamaForgeError as exc:
            self.app.call_from_thread(self._show_error, str(exc))
            return
        self.app.call_from_thread(self._fill, models)

    def _show_error(self, text: str) -> None:
        self.query_one("#running-status", Label).update(Text(text))

    def _fill(self, models: list[RunningModel]) -> None:
        self.models = models
        table = self.query_one("#running-table", DataTable)
        table.clear()
        for m in models:
            table.add_row(Text(m.name), Text(human_bytes(m.size_bytes)), Text(human_bytes(m.vram_bytes)),
                          Text(expires_text(m.expires_at)))
        self.query_one("#running-status", Label).update(
            Text(f"{len(models)} model(s) loaded" if models else "no models loaded"))

    def action_unload(self) -> None:
        table = self.query_one("#running-table", DataTable)
        if not self.models or not (0 <= table.cursor_row < len(self.models)):
            return
        self._unload(self.models[table.cursor_row].name)

    @work(thread=True, group="models-running", name="models.unload", description="Unloading a model",
          exit_on_error=False)
    def _unload(self, name: str) -> None:
        try:
            self.server.unload(name)
        except LlamaForgeError as exc:
            self.app.call_from_thread(self._show_error, str(exc))
            return
        self.app.call_from_thread(self.app.notify, f"Unloaded {name}", markup=False)
        self.app.call_from_thread(self.action_refresh)

    def action_close(self) -> None:
        self.dismiss(None)
