"""Helpers shared by the subcommands: settings from global options, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llamaforge_tui.core.settings import Settings


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings file, overridden by the global ``--models-dir`` / ``--cache-dir`` options."""
    settings = Settings.load()
    models_dirs = getattr(args, "models_dir", None)
    if models_dirs:
        settings.models_dirs = list(models_dirs)
    cache_dir = getattr(args, "cache_dir", None)
    if cache_dir:
        settings.hf_cache_dir = cache_dir
    return settings


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()
