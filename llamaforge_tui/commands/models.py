"""`llamaforge models` (not built yet: its issue replaces this module)."""

from __future__ import annotations

import argparse

from llamaforge_tui.core.errors import LlamaForgeError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="(not built yet)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise LlamaForgeError("'llamaforge models' is not built yet")
