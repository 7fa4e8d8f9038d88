"""Asks which Hugging Face repo an Ollama model's weights come from (a user override of the mapping)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from llamaforge_tui.core.model.basemodel import NO_MAPPING, REPO_ID_RE


class BaseOverrideScreen(ModalScreen[str | None]):
    """Dismisses with a repo id, ``"none"`` (never map), ``""`` (remove the override) or None (cancelled)."""

    DEFAULT_CSS = """
    BaseOverrideScreen {
        align: center middle;
    }
    BaseOverrideScreen > Vertical {
        width: 76;
        max-width: 100%;
        height: auto;
        padding: 1 2;
        border: thick $primary;
        background: $surface;
    }
    BaseOverrideScreen #base-override-error {
        color: $error;
        height: auto;
    }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="base_override.cancel")]

    def __init__(self, model_name: str, current: str | None) -> None:
        super().__init__()
        self.model_name = model_name
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(f"Hugging Face base model for {self.model_name}"))
            yield Label(Text("org/name (e.g. Qwen/Qwen2.5-3B-Instruct); 'none' to never map it; "
                             "empty to remove your override. Saved in the settings file."))
            yield Input(value=self.current or "", placeholder="org/name", id="base-override-input")
            yield Label(Text(""), id="base-override-error")

    def on_mount(self) -> None:
        self.query_one("#base-override-input", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value.strip()
        if value and value.lower() != NO_MAPPING and not REPO_ID_RE.fullmatch(value):
            self.query_one("#base-override-error", Label).update(Text(f"not a repo id: {value!r} (expected org/name)"))
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)
