"""Helpers shared by the subcommands: settings from global options, JSON output, output that cannot crash.

Text from files reaches the output (model folder names, dataset reasons, GGUF metadata); names with
undecodable bytes arrive as lone surrogates (``surrogateescape``), which a UTF-8 stream refuses with
UnicodeEncodeError. ``safe_streams`` makes stdout/stderr write them as ``\\xNN`` instead, and
``print_json`` escapes them before encoding, so the output is always valid UTF-8 (and valid JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llamaforge_tui.core.fsutil import SAFE_ERRORS, safe_json_value
from llamaforge_tui.core.settings import Settings


def safe_streams() -> None:
    """stdout/stderr write what they cannot encode as escapes instead of raising (called once by ``main``)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # absent on replaced streams (pytest capture)
        if reconfigure is not None:
            reconfigure(errors=SAFE_ERRORS)


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
    text = json.dumps(safe_json_value(data), indent=2, ensure_ascii=False, default=lambda o: safe_json_value(str(o)))
    sys.stdout.write(text)
    sys.stdout.write("\n")
    sys.stdout.flush()
