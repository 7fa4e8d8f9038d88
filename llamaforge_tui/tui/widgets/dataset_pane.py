"""The Dataset pane. (Not built yet: this placeholder is replaced by its issue.)"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static


class DatasetPane(Vertical):
    class ModelSelected(Message):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

    class DatasetSelected(Message):
        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

    def __init__(self, *, id: str | None = None, **kwargs: Any) -> None:
        super().__init__(id=id)

    def compose(self) -> ComposeResult:
        yield Static("The Dataset pane is not built yet.", classes="placeholder", markup=False)
