"""Asks for an Ollama model name (the destination of a copy or a rename), checked before it is sent."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.ollama.register import full_name, validate_name


class NamePrompt(ModalScreen[str | None]):
    """Dismisses with a valid model name, or None (escape)."""

    DEFAULT_CSS = """
    NamePrompt {
        align: center middle;
    }
    NamePrompt > Vertical {
        width: 76;
        max-width: 100%;
        height: auto;
        padding: 1 2;
        border: thick $primary;
        background: $surface;
    }
    NamePrompt #name-prompt-error {
        color: $error;
        height: auto;
    }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="name_prompt.cancel")]

    def __init__(self, title: str, value: str = "", *, taken: set[str] | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.taken = {t.lower() for t in (taken or set())}

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(self.title_text, style="bold"))
            yield Label(Text("name[:tag] or namespace/name[:tag]; Enter to go on, escape to cancel"))
            yield Input(value=self.value, placeholder="name:tag", id="name-prompt-input")
            yield Label(Text(""), id="name-prompt-error")

    def on_mount(self) -> None:
        self.query_one("#name-prompt-input", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value.strip()
        try:
            name = validate_name(value)
        except LlamaForgeError as exc:
            self.query_one("#name-prompt-error", Label).update(Text(str(exc)))
            return
        full = full_name(name)
        if full.lower() in self.taken:
            self.query_one("#name-prompt-error", Label).update(Text(f"{full} exists already; choose another name"))
            return
        self.dismiss(name)

    def action_cancel(self) -> None:
        self.dismiss(None)
