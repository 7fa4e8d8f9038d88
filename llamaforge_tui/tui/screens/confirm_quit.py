"""Asked when quitting while a run trains: quitting stops the run gracefully (checkpoint first)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class ConfirmQuit(ModalScreen[bool]):
    """Dismisses with True (stop the run, then quit) or False (keep training)."""

    DEFAULT_CSS = """
    ConfirmQuit {
        align: center middle;
    }
    ConfirmQuit > Vertical {
        width: 64;
        height: auto;
        padding: 1 2;
        border: thick $warning;
        background: $surface;
    }
    ConfirmQuit #confirm-quit-buttons {
        height: auto;
        margin-top: 1;
        align-horizontal: right;
    }
    ConfirmQuit Button {
        margin-left: 2;
    }
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Stop and quit", id="confirm_quit.yes"),
        Binding("n,escape", "answer(False)", "Keep training", id="confirm_quit.no"),
    ]

    def __init__(self, run_label: str) -> None:
        super().__init__()
        self.run_label = run_label

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(f"A training run is active ({self.run_label})."))
            yield Label(Text("Quit now? The run stops after its current step and writes a checkpoint "
                             "first, so you can resume it later."))
            with Horizontal(id="confirm-quit-buttons"):
                yield Button(Text("Keep training [n]"), id="confirm-quit-no", variant="primary")
                yield Button(Text("Stop and quit [y]"), id="confirm-quit-yes", variant="warning")

    def on_mount(self) -> None:
        self.query_one("#confirm-quit-no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "confirm-quit-yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
