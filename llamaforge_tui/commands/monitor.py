"""``llamaforge monitor RUN_DIR``: the TUI's monitor attached to a run folder.

For a run still training (say, ``llamaforge train`` in another tmux window) it follows ``events.jsonl``
as lines are appended; for a finished run it shows the whole history. The monitor only reads the run
folder, so closing it never affects the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llamaforge_tui.commands.common import settings_from_args
from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.train.events import EventLog


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "monitor", help="watch a training run (live or finished) in the TUI",
        description="Open the Train pane's monitor on a run folder (or a run id under the runs dir). "
                    "Follows a live run's events.jsonl; closing the monitor never stops the run.")
    parser.add_argument("run", metavar="RUN_DIR", help="run folder, or a run id listed by 'llamaforge runs'")
    parser.set_defaults(func=run)


def resolve_monitor_target(settings_runs: Path, text: str) -> Path:
    """A run folder from a path or a run id; it must hold an events file (or a config: not started yet)."""
    candidates = [Path(text).expanduser(), settings_runs / text]
    for path in candidates:
        if path.is_dir() and ((path / EventLog.FILENAME).exists() or (path / "config.toml").exists()):
            return path.resolve()
    if candidates[0].is_dir():
        raise LlamaForgeError(f"{text} is not a run folder: it has no {EventLog.FILENAME} or config.toml")
    raise LlamaForgeError(f"no run at {text}: give a run folder or a run id ('llamaforge runs' lists them)")


def run(args: argparse.Namespace) -> int:
    from llamaforge_tui.commands.tui import open_tui

    settings = settings_from_args(args)
    target = resolve_monitor_target(settings.runs_path, args.run)
    return open_tui(args, monitor_run=str(target))
