"""`llamaforge models show|copy|rename|delete|pull|running|unload`: the Models pane's actions, headless.

Everything but ``show`` goes through the Ollama server (we never write into the store). With no server the
command exits 1 with one line saying so and how to start one. ``show`` falls back to the store's layers.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from llamaforge_tui.commands.common import add_json_flag, print_json, settings_from_args
from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.ollama.client import OllamaServer
from llamaforge_tui.core.ollama.delete_plan import DeletePlan
from llamaforge_tui.core.ollama.pull_progress import PullTracker, eta_text
from llamaforge_tui.core.ollama.show import show_model
from llamaforge_tui.core.settings import Settings


def _sub(actions: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
    # The global options, accepted after the action too (`llamaforge models show X --models-dir D`).
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", action="append", default=argparse.SUPPRESS, metavar="DIR",
                        help="Ollama models folder (repeatable)")
    return parser


def register_actions(models_parser: argparse.ArgumentParser) -> None:
    actions = models_parser.add_subparsers(dest="models_action", metavar="ACTION")
    p = _sub(actions, "show", "Modelfile, template, system, parameters, license and details of a model")
    p.add_argument("name", metavar="NAME")
    add_json_flag(p)
    p.set_defaults(func=run_show)
    p = _sub(actions, "copy", "copy a model under a new name (through the Ollama server)")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("dest", metavar="DEST")
    p.set_defaults(func=run_copy)
    p = _sub(actions, "rename", "rename a model: copy it, then delete the old name (asks first)")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p.set_defaults(func=run_rename)
    p = _sub(actions, "delete", "delete a model through the Ollama server; says what it frees and asks first")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--yes", action="store_true", help="do not ask")
    add_json_flag(p)
    p.set_defaults(func=run_delete)
    p = _sub(actions, "pull", "pull a model through the Ollama server, with per-layer progress (Ctrl-C cancels)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--insecure", action="store_true", help="allow an insecure registry")
    add_json_flag(p)
    p.set_defaults(func=run_pull)
    p = _sub(actions, "running", "the models the Ollama server holds in memory")
    add_json_flag(p)
    p.set_defaults(func=run_running)
    p = _sub(actions, "unload", "drop a model from the server's memory now (keep_alive 0)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=run_unload)


def _server(settings: Settings) -> OllamaServer:
    return OllamaServer(settings=settings)


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        raise LlamaForgeError("not asking without a terminal: pass --yes to go ahead")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


# -- show ------------------------------------------------------------------------------------------------------------
def run_show(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    info = show_model(args.name, settings)
    if args.json:
        print_json(info.to_dict())
        return 0
    where = "the Ollama server" if info.source == "server" else "the store's layers (the server is not running)"
    print(f"{info.name} (from {where})")
    for key, value in info.details.items():
        if value not in (None, "", []):
            print(f"  {key}: {value}")
    for title, text in (("TEMPLATE", info.template), ("SYSTEM", info.system), ("PARAMETERS", info.parameters),
                        ("LICENSE", info.license), ("MODELFILE", info.modelfile)):
        print(f"\n{title}")
        print(text.rstrip() if text else "(none)")
    return 0


# -- copy / rename / delete ------------------------------------------------------------------------------------------
def run_copy(args: argparse.Namespace) -> int:
    _server(settings_from_args(args)).copy(args.source, args.dest)
    print(f"copied {args.source} to {args.dest}")
    return 0


def delete_plan(settings: Settings, name: str) -> DeletePlan | None:
    """What deleting ``name`` frees, flagged with the runs and exports it is tied to; None when the local store
    does not hold it (the server may be remote)."""
    from llamaforge_tui.core.train.runs import plan_model_delete

    return plan_model_delete(settings, name)


def describe_delete(plan: DeletePlan | None, name: str) -> list[str]:
    if plan is None:
        return [f"{name} is not in the local store, so the space it frees is unknown"]
    return [plan.freed_line(), *plan.kept_lines(), *(f"warning: {why}" for why in plan.flagged)]


def run_delete(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    server = _server(settings)
    server.ps()  # fail now, with the "start the server" line, before asking anything
    plan = delete_plan(settings, args.name)
    if not args.json:
        for line in describe_delete(plan, args.name):
            print(line)
    if not args.yes and not _ask(f"Delete {args.name}?"):
        print("kept")
        return 1
    server.delete(args.name)
    if args.json:
        print_json({"deleted": args.name, **(plan.to_dict() if plan else {"freed_bytes": None})})
    else:
        print(f"deleted {args.name}" + (f": freed {human_bytes(plan.freed_bytes)}" if plan else ""))
    return 0


def run_rename(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    server = _server(settings)
    server.show(args.source)  # exists? (and the server is up)
    if not args.yes and not _ask(f"Rename {args.source} to {args.dest} (copy, then delete {args.source})?"):
        print("kept")
        return 1
    server.copy(args.source, args.dest)
    server.delete(args.source)
    print(f"renamed {args.source} to {args.dest}")
    return 0


# -- pull ------------------------------------------------------------------------------------------------------------
def run_pull(args: argparse.Namespace) -> int:
    server = _server(settings_from_args(args))
    tracker = PullTracker(args.name)
    stop = threading.Event()
    tty = sys.stderr.isatty()
    last_line, last_print = "", 0.0
    try:
        for line in server.pull(args.name, stop, insecure=args.insecure):
            layer = tracker.update(line)
            if args.json:
                print(json.dumps(line.to_dict(), ensure_ascii=False), flush=True)
                continue
            if layer is None:
                if tty and last_line:
                    sys.stderr.write("\n")
                print(line.status, file=sys.stderr, flush=True)
                last_line = ""
                continue
            text = (f"{line.status}: {layer.fraction:6.1%}  {human_bytes(layer.completed)}/{human_bytes(layer.total)}"
                    f"  {human_bytes(layer.speed or 0)}/s  ETA {eta_text(layer.eta_seconds)}")
            now = time.monotonic()
            if tty:
                sys.stderr.write("\r" + text.ljust(len(last_line)))
                sys.stderr.flush()
                last_line = text
            elif layer.done or now - last_print >= 2.0:
                print(text, file=sys.stderr, flush=True)
                last_print = now
    except KeyboardInterrupt:
        stop.set()
        raise LlamaForgeError(f"pull of {args.name} cancelled") from None
    if not tracker.finished:
        raise LlamaForgeError(f"pull of {args.name} ended before the server said success (last: {tracker.status!r})")
    if not args.json:
        print(f"pulled {args.name} ({human_bytes(tracker.total_bytes)})")
    return 0


# -- running ---------------------------------------------------------------------------------------------------------
def run_running(args: argparse.Namespace) -> int:
    models = _server(settings_from_args(args)).ps()
    if args.json:
        print_json([m.to_dict() for m in models])
        return 0
    if not models:
        print("no models loaded")
        return 0
    rows = [("NAME", "SIZE", "VRAM", "UNTIL")]
    rows += [(m.name, human_bytes(m.size_bytes), human_bytes(m.vram_bytes), m.expires_at or "-") for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def run_unload(args: argparse.Namespace) -> int:
    _server(settings_from_args(args)).unload(args.name)
    print(f"unloaded {args.name}")
    return 0
