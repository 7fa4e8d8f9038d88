"""`llamaforge eval RUN`: base vs tuned on the run's held-out data (loss, perplexity, generation scores), as a
table or as JSON, kept as ``RUN/eval.json``. Progress goes to stderr, one line every few seconds (tmux-log
friendly); stdout holds only the result."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from llamaforge_tui.commands.common import add_json_flag, print_json, settings_from_args
from llamaforge_tui.core.infer.eval_format import aligned, table_rows

DEFAULT_GENERAL = "default"  # --general with no FILE: the sample shipped in assets/
PROGRESS_SECONDS = 5.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="judge a fine-tune: base vs tuned on the run's eval data",
        description="Base vs tuned on the run's eval split (or, without one, its training data): loss and "
                    "perplexity on the reply tokens, greedy answers scored by exact match, token F1 and ROUGE-L, "
                    "and optionally the loss on general text (forgetting). Written to RUN/eval.json.")
    parser.add_argument("run", metavar="RUN", help="a run folder, or a run id under the data dir")
    parser.add_argument("--limit", type=int, default=50, metavar="N",
                        help="answer at most N prompts (default 50; 0: loss and perplexity only)")
    parser.add_argument("--general", nargs="?", const=DEFAULT_GENERAL, metavar="FILE",
                        help="also measure the loss on a general-text file (forgetting check); without FILE, "
                             "the sample shipped with llamaforge")
    parser.add_argument("--samples", type=int, default=5, metavar="N",
                        help="show the N examples where base and tuned differ most (default 5)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="run", choices=("run", "auto", "float32", "bfloat16", "float16"),
                        help="weights dtype (default: the one the run trained in)")
    add_json_flag(parser)
    parser.set_defaults(func=run_eval)


class TerminalProgress:
    """One stderr line when a phase starts, then at most one every ``interval`` seconds."""

    def __init__(self, stream: Any = None, interval: float = PROGRESS_SECONDS) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = float("-inf")
        self._phase = ""

    def __call__(self, progress: Any) -> None:
        now = time.monotonic()
        if progress.phase == self._phase and now - self._last < self.interval:
            return
        self._phase, self._last = progress.phase, now
        minutes, seconds = divmod(int(progress.elapsed), 60)
        self.stream.write(f"eval {minutes}:{seconds:02d}  {progress.message}\n")
        self.stream.flush()


def run_eval(args: argparse.Namespace) -> int:
    from llamaforge_tui.core.infer.evaluate import default_general_sample, evaluate_run

    general = default_general_sample() if args.general == DEFAULT_GENERAL else args.general
    result = evaluate_run(args.run, settings_from_args(args), limit=args.limit, general=general,
                          samples=args.samples, device=args.device, dtype=args.dtype, progress=TerminalProgress())
    data = result.to_dict()
    if args.json:
        print_json(data)
        return 0
    print(format_report(data))
    return 0


def _one_line(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_report(data: dict[str, Any]) -> str:
    split = ("held-out eval split" if data["split"] == "eval"
             else "training data (no eval split: this measures memorization, not generalization)")
    lines = [f"{data['run']}: {split}, {data['examples']} examples for loss, {data['generated']} answered"
             + (f" ({data['skipped']} too long, skipped)" if data.get("skipped") else "")]
    lines += aligned([("metric", "base", "tuned", "change"), *table_rows(data)])
    if data.get("general"):
        lines.append(f"general text: {data['general']['path']} ({data['general']['tokens']} tokens)")
    if data["samples"]:
        lines.append("")
        lines.append("where base and tuned differ most:")
        for s in data["samples"]:
            lines += [f"  prompt     {_one_line(s['prompt'])}", f"  reference  {_one_line(s['reference'])}",
                      f"  base       {_one_line(s['base']) or '(empty)'}",
                      f"  tuned      {_one_line(s['tuned']) or '(empty)'}", ""]
    lines.append(f"saved: {data['path']}/eval.json")
    return "\n".join(lines).rstrip("\n")
