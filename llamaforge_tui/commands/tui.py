"""Opening the full-screen app (``llamaforge`` with no command, and ``llamaforge monitor``)."""

from __future__ import annotations

import argparse

from llamaforge_tui.commands.common import settings_from_args


def open_tui(args: argparse.Namespace, *, monitor_run: str | None = None) -> int:
    from llamaforge_tui.tui.app import make_app  # Textual is imported only when the UI opens

    app = make_app(settings_from_args(args), monitor_run=monitor_run)
    app.run()
    return int(app.return_code or 0)
