"""`llamaforge models`: the Models pane's table, headless (``--json`` for scripts; shape in shared/CLI.md)."""

from __future__ import annotations

import argparse
import shutil
import sys

from llamaforge_tui.commands.common import add_json_flag, print_json, settings_from_args
from llamaforge_tui.core.errors import StoreError
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.model.basemodel import scan_models
from llamaforge_tui.core.ollama.store import OllamaModel, StoreScan, server_status


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="list the models in the Ollama store; show, copy, rename, delete, pull, running, unload",
        description="List every model in the Ollama store: GGUF details, status, and the Hugging Face base it maps "
                    "to. The subcommands manage models through the Ollama server.")
    add_json_flag(parser)
    parser.set_defaults(func=run)
    from llamaforge_tui.commands.models_manage import register_actions

    register_actions(parser)


def base_text(model: OllamaModel) -> str:
    """The base-model cell: repo, where the mapping came from, and the cache status."""
    info = model.base_model
    if info is None or info.repo is None:
        if model.gguf_path is None:
            return "-"
        return "no mapping: will train from the GGUF"
    return f"{info.repo} [{info.source}] {info.describe_cache()}"


def _row(model: OllamaModel) -> list[str]:
    s = model.summary
    status = model.status if model.status == "ok" else f"{model.status}: {model.reason}"
    return [
        model.full_name,
        s.architecture or "?" if s else "-",
        s.quantization or "?" if s else "-",
        s.parameter_label if s else "-",
        str(s.context_length) if s and s.context_length else "-",
        human_bytes(model.size_bytes) if model.size_bytes else "-",
        status if model.status != "ok" else base_text(model),
    ]


def format_table(scan: StoreScan, width: int | None = None) -> str:
    """Fixed columns; the last one (base model, or the reason a model is not usable) is cut to ``width``
    (on a terminal only: piped output keeps whole lines for logs and grep)."""
    if width is None and sys.stdout.isatty():
        width = shutil.get_terminal_size((120, 40)).columns
    header = ["NAME", "ARCH", "QUANT", "PARAMS", "CTX", "SIZE", "BASE MODEL / STATUS"]
    rows = [header] + [_row(m) for m in scan.models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    widths[0] = min(widths[0], 48)
    lines = []
    for r in rows:
        cells = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(r, widths)]
        line = "  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + r[-1]
        lines.append(line if width is None or len(line) <= width else line[: max(width - 1, 20)] + "…")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    scan = scan_models(settings)
    if not scan.roots and scan.problems:
        raise StoreError("no readable Ollama models folder: " + "; ".join(scan.problems))
    for problem in scan.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.json:
        print_json([m.to_dict() for m in scan.models])
        return 0
    roots = ", ".join(str(r) for r in scan.roots)
    if scan.models:
        print(format_table(scan))
    else:
        print(f"no models in {roots}")
    print(f"\n{len(scan.models)} model(s) in {roots}. {server_status(settings, timeout=0.5).describe()}")
    return 0
