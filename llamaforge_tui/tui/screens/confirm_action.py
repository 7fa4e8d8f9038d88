"""A confirmation for anything destructive: what goes, what it frees, what stays, and warnings, word for word.

The text comes from the caller (names of models and runs are other people's strings), so every line is shown
as plain ``Text``. Cancel holds the focus, so Enter never deletes by accident; ``y`` confirms, ``n``/escape cancel.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class ConfirmAction(ModalScreen[bool]):
    """Dismisses with True (go ahead) or False (keep everything)."""

    DEFAULT_CSS = """
    ConfirmAction {
        align: center middle;
    }
    ConfirmAction > Vertical {
        width: 84;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        padding: 1 2;
        border: thick $error;
        background: $surface;
    }
    ConfirmAction #confirm-action-lines {
        height: auto;
        max-height: 14;
    }
    ConfirmAction #confirm-action-lines Label {
        width: 100%;
    }
    ConfirmAction .-flagged {
        color: $warning;
        text-style: bold;
    }
    ConfirmAction .-kept {
        color: $text-muted;
    }
    ConfirmAction #confirm-action-buttons {
        height: auto;
        margin-top: 1;
        align-horizontal: right;
    }
    ConfirmAction Button {
        margin-left: 2;
    }
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Confirm", id="confirm_action.yes"),
        Binding("n,escape", "answer(False)", "Cancel", id="confirm_action.no"),
    ]

    def __init__(self, question: str, lines: Sequence[str] = (), *, flagged: Sequence[str] = (),
                 kept: Sequence[str] = (), confirm_label: str = "Delete") -> None:
        super().__init__()
        self.question = question
        self.lines = list(lines)
        self.flagged = list(flagged)
        self.kept = list(kept)
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(self.question, style="bold"), id="confirm-action-question")
            with VerticalScroll(id="confirm-action-lines"):
                for line in self.lines:
                    yield Label(Text(line), classes="confirm-action-line")
                for line in self.kept:
                    yield Label(Text(line), classes="-kept confirm-action-kept")
                for line in self.flagged:
                    yield Label(Text(f"Warning: {line}"), classes="-flagged confirm-action-flagged")
            with Horizontal(id="confirm-action-buttons"):
                yield Button(Text("Cancel [n]"), id="confirm-action-no", variant="primary")
                yield Button(Text(f"{self.confirm_label} [y]"), id="confirm-action-yes", variant="error")

    def on_mount(self) -> None:
        self.query_one("#confirm-action-no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "confirm-action-yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
