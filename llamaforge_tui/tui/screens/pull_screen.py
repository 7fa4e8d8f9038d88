"""Pulls a model through the Ollama server: one progress bar per layer with bytes, speed and ETA; ``c`` cancels.

The pull runs in a thread worker that iterates ``OllamaServer.pull`` with the worker's cancel event, so a
cancel closes the HTTP stream (the server stops downloading). An error line from the server ("file does not
exist", no network) ends the pull with that one message on the screen.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, ProgressBar
from textual.worker import Worker, WorkerState, get_current_worker

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.ollama.client import OllamaServer, PullProgress
from llamaforge_tui.core.ollama.pull_progress import LayerProgress, PullTracker, eta_text


def layer_text(layer: LayerProgress) -> str:
    sizes = f"{human_bytes(layer.completed)}/{human_bytes(layer.total)}"
    if layer.done:
        return sizes
    speed = layer.speed
    return f"{sizes} {human_bytes(speed) + '/s' if speed is not None else '--'} ETA {eta_text(layer.eta_seconds)}"


class PullScreen(ModalScreen[bool]):
    """Dismisses with True when the model was pulled, False when cancelled or failed."""

    DEFAULT_CSS = """
    PullScreen {
        align: center middle;
    }
    PullScreen > Vertical {
        width: 96;
        max-width: 100%;
        height: auto;
        max-height: 90%;
        padding: 1 2;
        border: thick $primary;
        background: $surface;
    }
    PullScreen #pull-layers {
        height: auto;
        max-height: 16;
    }
    PullScreen .pull-layer {
        height: 1;
    }
    PullScreen .pull-layer Label {
        width: 14;
    }
    PullScreen .pull-layer-bar {
        width: auto;
    }
    PullScreen .pull-layer-bar Bar {
        width: 16;
    }
    PullScreen .pull-layer .pull-layer-text {
        width: 1fr;
        margin-left: 1;
    }
    PullScreen #pull-error {
        color: $error;
        height: auto;
    }
    """

    BINDINGS = [
        Binding("c", "cancel_pull", "Cancel pull", id="pull.cancel"),
        Binding("escape", "close", "Close", id="pull.close"),
    ]

    class Line(Message):
        def __init__(self, line: PullProgress) -> None:
            super().__init__()
            self.line = line

    def __init__(self, name: str, server: OllamaServer) -> None:
        super().__init__()
        self.model_name = name
        self.server = server
        self.tracker = PullTracker(name)
        self.error: str | None = None
        self.cancelled = False
        self.worker: Worker | None = None
        self._bars: dict[str, tuple[ProgressBar, Label]] = {}

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(f"Pulling {self.model_name}", style="bold"), id="pull-title")
            yield Label(Text("starting…"), id="pull-status")
            yield VerticalScroll(id="pull-layers")
            yield Label(Text(""), id="pull-error")
            yield Label(Text("c cancels · escape closes"), id="pull-hint")
        yield Footer()

    def on_mount(self) -> None:
        self.worker = self._pull()

    @work(thread=True, group="models-pull", name="models.pull", description="Pulling an Ollama model",
          exit_on_error=False)
    def _pull(self) -> None:
        worker = get_current_worker()
        for line in self.server.pull(self.model_name, worker.cancelled_event):
            self.post_message(self.Line(line))

    @on(Line)
    def _line(self, message: Line) -> None:
        layer = self.tracker.update(message.line)
        self.query_one("#pull-status", Label).update(Text(message.line.status))
        if layer is None:
            return
        if layer.digest not in self._bars:
            bar = ProgressBar(total=layer.total or None, show_eta=False, classes="pull-layer-bar")
            text = Label(Text(""), classes="pull-layer-text")
            row = Horizontal(Label(Text(layer.short)), bar, text, classes="pull-layer")
            self.query_one("#pull-layers", VerticalScroll).mount(row)
            self._bars[layer.digest] = (bar, text)
        bar, text = self._bars[layer.digest]
        bar.update(total=layer.total or None, progress=layer.completed)
        text.update(Text(layer_text(layer)))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self.worker or event.state in (WorkerState.PENDING, WorkerState.RUNNING):
            return
        event.stop()  # handled here, not by the app's generic error notice
        status = self.query_one("#pull-status", Label)
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.error = str(error) if isinstance(error, LlamaForgeError) else f"{type(error).__name__}: {error}"
            self.query_one("#pull-error", Label).update(Text(f"Pull failed: {self.error}"))
            status.update(Text("failed"))
        elif self.cancelled or event.state == WorkerState.CANCELLED:
            status.update(Text("cancelled"))
        elif self.tracker.finished:
            status.update(Text(f"pulled {self.model_name} ({human_bytes(self.tracker.total_bytes)})"))
        else:
            self.error = "the server ended the pull without saying success"
            self.query_one("#pull-error", Label).update(Text(f"Pull failed: {self.error}"))
        self.query_one("#pull-hint", Label).update(Text("escape closes"))

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.state in (WorkerState.PENDING, WorkerState.RUNNING)

    def action_cancel_pull(self) -> None:
        if self.running and self.worker is not None:
            self.cancelled = True
            self.query_one("#pull-status", Label).update(Text("cancelling…"))
            self.worker.cancel()

    def action_close(self) -> None:
        if self.running:
            self.action_cancel_pull()
        self.dismiss(self.tracker.finished and self.error is None and not self.cancelled)
