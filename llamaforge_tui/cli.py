"""The ``llamaforge`` command. No arguments opens the TUI; subcommands run headless.

The contract (names, options, JSON shapes) is ``shared/CLI.md``. Each subcommand lives in
``llamaforge_tui/commands/<module>.py`` and exposes ``register(subparsers)``, which adds its
parser(s) and sets ``func(args) -> int``. Errors the user can act on are ``LlamaForgeError`` and print
as one line; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from llamaforge_tui import __version__
from llamaforge_tui.commands.common import safe_streams
from llamaforge_tui.core.errors import LlamaForgeError

# Order here is the order in `llamaforge --help`.
COMMAND_MODULES = ("models", "cache", "data", "inspect", "train", "runs", "monitor", "export", "chat", "eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamaforge",
        description="Fine-tune the models you run in Ollama. With no command, opens the terminal UI.",
    )
    parser.add_argument("--version", action="version", version=f"llamaforge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--models-dir", action="append", default=None, metavar="DIR",
                        help="Ollama models folder (repeatable); overrides the default roots")
    parser.add_argument("--cache-dir", default=None, metavar="DIR", help="Hugging Face hub cache folder")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"llamaforge_tui.commands.{name}")
        module.register(subparsers)
    # The global options are also accepted after the subcommand (`llamaforge models --models-dir D`).
    for sub in subparsers.choices.values():
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--models-dir", action="append", default=argparse.SUPPRESS, metavar="DIR",
                         help="Ollama models folder (repeatable); overrides the default roots")
        sub.add_argument("--cache-dir", default=argparse.SUPPRESS, metavar="DIR", help="Hugging Face hub cache folder")
    return parser


def _configure_logging(debug: bool, *, tui: bool) -> None:
    """Headless commands log to stderr. The TUI owns the terminal, so it logs to a file instead (anything
    written to stderr would land on top of the screen); the Train pane also shows records in its log panel."""
    level = logging.DEBUG if debug else logging.WARNING
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if tui else "%(levelname)s %(name)s: %(message)s"
    if tui:
        from llamaforge_tui.core.settings import data_dir

        try:
            data_dir().mkdir(parents=True, exist_ok=True)
            logging.basicConfig(level=level, format=fmt, filename=str(data_dir() / "llamaforge.log"))
        except OSError:  # no writable data dir: drop records rather than write them over the screen
            logging.getLogger().addHandler(logging.NullHandler())
            logging.getLogger().setLevel(level)
        _capture_warnings(debug, propagate=True)
        return
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    _capture_warnings(debug, propagate=debug)


def _capture_warnings(debug: bool, *, propagate: bool) -> None:
    """Libraries' ``warnings.warn`` (transformers' FutureWarnings and the like) go to the log file, never onto
    the user's terminal or over the TUI: they are for us, not for someone training a model. ``--debug``
    also shows them on stderr (headless) or in the Train pane's log panel (the TUI).

    ``propagate``: the root logger already writes where they belong (the TUI's log file, or stderr with
    ``--debug``); otherwise they get their own handler on the log file."""
    logging.captureWarnings(True)
    warnings_log = logging.getLogger("py.warnings")
    warnings_log.propagate = propagate
    for old in [h for h in warnings_log.handlers if getattr(h, "llamaforge_warnings", False)]:
        warnings_log.removeHandler(old)  # main() called again in one process (tests)
        old.close()
    if propagate:
        return
    from llamaforge_tui.core.settings import data_dir

    try:
        data_dir().mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(data_dir() / "llamaforge.log", encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    except OSError:  # no writable data dir: drop them rather than write them on the terminal
        handler = logging.NullHandler()
    handler.llamaforge_warnings = True  # type: ignore[attr-defined]
    warnings_log.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    from llamaforge_tui.core.train.runtime import prefer_huge_pages

    prefer_huge_pages()  # before anything imports torch (it reads the switch once)
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.debug, tui=args.command in (None, "monitor"))
    safe_streams()  # text from files (undecodable names) never crashes the output
    try:
        if args.command is None:
            from llamaforge_tui.commands.tui import open_tui

            return open_tui(args)
        return int(args.func(args) or 0)
    except LlamaForgeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `llamaforge models | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
