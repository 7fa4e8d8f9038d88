"""Asks how to prune a run's checkpoints: keep the newest N, or (``a``) only the final adapter."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

ADAPTER_ONLY = "adapter"


class PruneScreen(ModalScreen[int | str | None]):
    """Dismisses with a number of checkpoints to keep, ``ADAPTER_ONLY``, or None (escape)."""

    DEFAULT_CSS = """
    PruneScreen {
        align: center middle;
    }
    PruneScreen > Vertical {
        width: 76;
        max-width: 100%;
        height: auto;
        padding: 1 2;
        border: thick $primary;
        background: $surface;
    }
    PruneScreen #prune-error {
        color: $error;
        height: auto;
    }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="prune.cancel")]

    def __init__(self, run_name: str, steps: list[int], has_adapter: bool) -> None:
        super().__init__()
        self.run_name = run_name
        self.steps = steps
        self.has_adapter = has_adapter

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(f"Prune the checkpoints of {self.run_name}", style="bold"))
            listed = ", ".join(f"step {s}" for s in self.steps) or "none"
            yield Label(Text(f"Checkpoints: {listed}. Final adapter: {'yes' if self.has_adapter else 'not yet'}."))
            yield Label(Text("Keep how many of the newest checkpoints? A number, or a to keep only the final "
                             "adapter; Enter goes on, escape cancels. You confirm before anything is deleted."))
            yield Input(value="1", placeholder="N, or a", id="prune-keep", max_length=6)
            yield Label(Text(""), id="prune-error")

    def on_mount(self) -> None:
        self.query_one("#prune-keep", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value.strip().lower()
        error = self.query_one("#prune-error", Label)
        if value in ("a", ADAPTER_ONLY):
            if not self.has_adapter:
                error.update(Text("this run has no final adapter yet: keep at least its last checkpoint"))
                return
            self.dismiss(ADAPTER_ONLY)
            return
        if not value.isdigit():
            error.update(Text("give a whole number (0 or more), or a"))
            return
        self.dismiss(int(value))

    def action_cancel(self) -> None:
        self.dismiss(None)
