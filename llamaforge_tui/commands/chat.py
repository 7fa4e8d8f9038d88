"""`llamaforge chat TARGET`: talk to a run (adapter on, and off with --compare), an exported GGUF, or an Ollama model.

With ``--prompt`` it answers once and exits (``--json`` prints ``{target, backend, prompt, results}``). Without, it
is a plain line-based REPL that works over SSH and in tmux: answers stream as they are written, ``/clear`` starts a
new conversation, ``/system TEXT`` sets the system prompt, ``/quit`` (or Ctrl-D) leaves, and Ctrl-C stops the
answer being written without leaving.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from llamaforge_tui.commands.common import add_json_flag, print_json, settings_from_args

REPL_HELP = "commands: /clear (new conversation), /system TEXT, /quit (or Ctrl-D); Ctrl-C stops an answer"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat with a run (base vs tuned with --compare), an exported GGUF or an Ollama model",
        description="TARGET: a run folder or run id (its base with the adapter), an exported .gguf or export "
        "folder (llama.cpp, with the Modelfile's template), or ollama:NAME (the Ollama server). "
        "Without --prompt, a line-based chat: " + REPL_HELP + ".",
    )
    parser.add_argument("target", metavar="TARGET")
    parser.add_argument("--compare", action="store_true",
                        help="runs only: answer with the adapter on and off (one model in memory)")
    parser.add_argument("--prompt", default=None, metavar="TEXT", help="answer TEXT once and exit")
    parser.add_argument("--system", default=None, metavar="TEXT", help="system prompt (default: the model's SYSTEM)")
    parser.add_argument("--max-tokens", type=int, default=None, metavar="N", help="longest answer (default 256)")
    parser.add_argument("--temperature", type=float, default=None, metavar="T",
                        help="0 is greedy (default: the model's PARAMETER, else 0)")
    parser.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling (default 1.0)")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="sampling seed (default 0)")
    add_json_flag(parser)
    parser.set_defaults(func=run)


def options_from_args(args: argparse.Namespace, defaults: Any) -> Any:
    from dataclasses import replace

    from llamaforge_tui.core.infer.chat import ChatOptions

    opts = ChatOptions.from_defaults(defaults)
    given = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
             "seed": args.seed, "system": args.system}
    return replace(opts, **{k: v for k, v in given.items() if v is not None}).check()


def run(args: argparse.Namespace) -> int:
    from llamaforge_tui.core.infer.chat import ChatError, open_backend
    from llamaforge_tui.core.infer.targets import parse_target

    settings = settings_from_args(args)
    target = parse_target(args.target, settings)
    if args.compare and not target.can_compare:
        raise ChatError(f"--compare needs a run: {args.target} is a {target.kind} target with no adapter to switch "
                        "off")
    quiet = args.json

    def progress(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    backend = open_backend(target, settings, progress=progress)
    try:
        options = options_from_args(args, backend.defaults)
        if args.prompt is not None:
            return _once(args, backend, options)
        return _repl(args, backend, options)
    finally:
        backend.close()


def _once(args: argparse.Namespace, backend: Any, options: Any) -> int:
    from llamaforge_tui.core.infer.chat import ChatHistory, ask

    printer = None if args.json else _Printer(backend)
    answers = _interruptible(lambda stop: ask(backend, ChatHistory(), args.prompt, options, compare=args.compare,
                                              on_token=printer.token if printer else None, stop_event=stop,
                                              on_done=printer.done if printer else None))
    if args.json:
        print_json({"target": args.target, "backend": backend.name, "prompt": args.prompt,
                    "results": {side: g.to_dict() for side, g in answers.items()}})
    return 0


def _repl(args: argparse.Namespace, backend: Any, options: Any) -> int:
    from dataclasses import replace

    from llamaforge_tui.core.errors import LlamaForgeError
    from llamaforge_tui.core.infer.chat import ChatHistory, ask

    history = ChatHistory()
    printer = _Printer(backend)
    interactive = sys.stdin.isatty()
    print(f"chatting with {backend.target.label} ({backend.name}); {REPL_HELP}", file=sys.stderr, flush=True)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:  # at the prompt: drop the line, keep the chat
            print(file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit", "/q"):
            break
        if text == "/clear":
            history.clear()
            print("(new conversation)", flush=True)
            continue
        if text.startswith("/system"):
            options = replace(options, system=text.removeprefix("/system").strip())
            print(f"(system prompt {'set' if options.system else 'cleared'})", flush=True)
            continue
        if text in ("/help", "/?"):
            print(REPL_HELP, flush=True)
            continue
        try:
            _interruptible(lambda stop, t=text, o=options: ask(backend, history, t, o, compare=args.compare,
                                                               on_token=printer.token, stop_event=stop,
                                                               on_done=printer.done))
        except LlamaForgeError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
    return 0


def _interruptible(work: Any) -> Any:
    """Run ``work(stop_event)`` in a thread; Ctrl-C sets the stop event (the answer so far is kept)."""
    stop = threading.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work(stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="lf-chat", daemon=True)
    thread.start()
    while thread.is_alive():
        try:
            thread.join(0.1)
        except KeyboardInterrupt:
            stop.set()
            print("\n(stopped)", file=sys.stderr, flush=True)
    if "error" in box:
        raise box["error"]
    return box.get("result")


_CONTROL = {c: "\ufffd" for c in (*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, *range(0x80, 0xA0))}


def printable(text: str) -> str:
    """Model text for a terminal: control characters (an ESC could move the cursor or retitle the window) are
    shown as U+FFFD; newlines and tabs stay. ``--json`` keeps the text as it was generated."""
    return text.translate(_CONTROL)


class _Printer:
    """Streams each side's answer under a header, then its tokens/s."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.side: str | None = None

    def token(self, side: str, text: str) -> None:
        if side != self.side:
            self.side = side
            print(f"--- {self.backend.side_label(side)} ---", flush=True)
        sys.stdout.write(printable(text))
        sys.stdout.flush()

    def done(self, side: str, result: Any) -> None:
        if side != self.side:  # an empty answer: still show its header
            self.side = side
            print(f"--- {self.backend.side_label(side)} ---", flush=True)
        note = "" if result.finish == "stop" else f", {result.finish}"
        print(f"\n[{result.tokens} tokens, {result.tokens_per_second:.1f} tokens/s{note}]", flush=True)
        self.side = None
