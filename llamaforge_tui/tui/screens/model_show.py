"""One model's Modelfile, TEMPLATE, SYSTEM, PARAMETERs, license and details (``enter`` in the Models pane).

The facts come from ``core.ollama.show``: the server's ``/api/show``, or the store's layers with the server
down; the header says which. Everything is text from other people's files, shown as plain ``Text``.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from llamaforge_tui.core.ollama.show import ModelShow


def show_text(info: ModelShow) -> Text:
    text = Text()
    where = "the Ollama server (/api/show)" if info.source == "server" else "the store's layers"
    text.append(f"{info.name}\n", style="bold")
    text.append(f"Source: {where}\n")
    if info.note:
        text.append(f"({info.note})\n", style="italic")
    for key, value in info.details.items():
        if value not in (None, "", [], {}):
            text.append(f"  {key}: ", style="bold")
            text.append(f"{', '.join(map(str, value)) if isinstance(value, list) else value}\n")
    for title, body in (("TEMPLATE", info.template), ("SYSTEM", info.system), ("PARAMETERS", info.parameters),
                        ("LICENSE", info.license), ("MODELFILE", info.modelfile)):
        text.append(f"\n{title}\n", style="bold underline")
        text.append((body.rstrip() if body else "(none)") + "\n")
    return text


class ModelShowScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    ModelShowScreen {
        align: center middle;
    }
    ModelShowScreen > Vertical {
        width: 95%;
        height: 90%;
        border: thick $primary;
        background: $surface;
    }
    ModelShowScreen VerticalScroll {
        padding: 0 1;
    }
    """

    BINDINGS = [
        Binding("escape,q", "close", "Close", id="model_show.close"),
        Binding("j,down", "scroll(1)", "Down", show=False, id="model_show.down"),
        Binding("k,up", "scroll(-1)", "Up", show=False, id="model_show.up"),
    ]

    def __init__(self, info: ModelShow) -> None:
        super().__init__()
        self.info = info

    def compose(self) -> ComposeResult:
        with Vertical():
            with VerticalScroll(id="model-show-scroll"):
                yield Static(show_text(self.info), id="model-show-text", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#model-show-scroll", VerticalScroll).focus()

    def action_scroll(self, lines: int) -> None:
        self.query_one("#model-show-scroll", VerticalScroll).scroll_relative(y=lines, animate=False)

    def action_close(self) -> None:
        self.dismiss(None)
