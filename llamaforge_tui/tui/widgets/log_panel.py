"""The log panel: the trainer's ``LogLine`` events and Python ``logging`` records, as plain text.

Log text comes from models, datasets and libraries, so it is never parsed as markup (``Log`` writes
plain strings). Records may be emitted from any thread (the trainer runs in a worker), so the handler
only posts a message, which is thread-safe; the panel writes it on the UI thread.
"""

from __future__ import annotations

import logging
import time

from textual.message import Message
from textual.widgets import Log

from llamaforge_tui.core.train.events import LogLine


def format_line(level: str, message: str, when: float | None = None) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(when if when is not None else time.time()))
    return f"{stamp} {level.upper():<7} {message}"


class LogPanel(Log):
    """A bounded, plain-text log view."""

    class Record(Message):
        """A formatted log line posted from any thread."""

        def __init__(self, line: str) -> None:
            super().__init__()
            self.line = line

    def __init__(self, *, max_lines: int = 2000, id: str | None = None) -> None:
        super().__init__(max_lines=max_lines, highlight=False, auto_scroll=True, id=id)

    def write_event(self, event: LogLine) -> None:
        self.write_line(format_line(event.level, event.message, event.time))

    def on_log_panel_record(self, message: Record) -> None:
        message.stop()
        self.write_line(message.line)


class PanelLogHandler(logging.Handler):
    """Forwards ``logging`` records to a ``LogPanel``, from whichever thread logged them."""

    def __init__(self, panel: LogPanel, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.panel = panel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text = f"{text}: {record.exc_info[1]}"
            line = format_line(record.levelname, f"{record.name}: {text}", record.created)
            self.panel.post_message(LogPanel.Record(line))
        except Exception:  # a logging handler must never raise into the code that logged
            self.handleError(record)
