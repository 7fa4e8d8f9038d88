"""A download's progress: a bar plus one line of bytes, speed, ETA and the current file."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, ProgressBar

from llamaforge_tui.core.hub.download import DownloadProgress, progress_text


class DownloadProgressView(Vertical):
    """Shows ``DownloadProgress`` events; state classes ``-active``, ``-done``, ``-failed``, ``-cancelled``
    drive its CSS (app.tcss, HF cache pane section)."""

    DEFAULT_CSS = """
    DownloadProgressView {
        height: auto;
        display: none;
    }
    DownloadProgressView.-active, DownloadProgressView.-done, DownloadProgressView.-failed,
    DownloadProgressView.-cancelled {
        display: block;
    }
    """

    def compose(self) -> ComposeResult:
        yield Label(Text(""), id="download-title")
        yield ProgressBar(total=None, show_eta=False, id="download-bar")
        yield Label(Text(""), id="download-line")

    STATES = ("-active", "-done", "-failed", "-cancelled")

    def _state(self, state: str) -> None:
        for name in self.STATES:
            self.set_class(name == state, name)

    @property
    def state(self) -> str | None:
        return next((name for name in self.STATES if self.has_class(name)), None)

    def begin(self, repo_id: str, revision: str | None) -> None:
        self._state("-active")
        self.query_one("#download-title", Label).update(Text(f"Downloading {repo_id}@{revision or 'main'}  (c cancels)"))
        self.query_one("#download-bar", ProgressBar).update(total=None, progress=0)
        self.query_one("#download-line", Label).update(Text("resolving ..."))

    def show(self, progress: DownloadProgress) -> None:
        bar = self.query_one("#download-bar", ProgressBar)
        if progress.total_bytes:
            bar.update(total=progress.total_bytes, progress=progress.downloaded_bytes)
        self.query_one("#download-line", Label).update(Text(progress_text(progress)))

    def finish(self, message: str, state: str = "-done") -> None:
        """End the download display in ``state`` (``-done``, ``-failed`` or ``-cancelled``)."""
        self._state(state)
        self.query_one("#download-line", Label).update(Text(message))

    @property
    def line(self) -> str:
        """The text of the status line (for tests and screen readers)."""
        return str(self.query_one("#download-line", Label).render())
