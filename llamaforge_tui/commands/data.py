"""`llamaforge data FILE`: the Dataset pane, headless: format, stats, first rendered example, errors."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llamaforge_tui.commands.common import add_json_flag, print_json, settings_from_args
from llamaforge_tui.core.data.dataset import (
    POLICIES,
    StatsScan,
    as_jsonable,
    detect_format,
    iter_records,
    render_for_display,
    scan_token_stats,
    steps_per_epoch,
)
from llamaforge_tui.core.model.render_context import RenderContext, build_render_context
from llamaforge_tui.core.data.records import Record, RecordError
from llamaforge_tui.core.errors import DatasetError

SHOWN_ERRORS = 20
DEFAULT_MAX_SEQ_LEN = 2048


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="check a dataset: format, errors, token stats, the first example as the model sees it",
        description="Detect a dataset's format, validate every record, and (with --model) render the first "
                    "example with the model's chat template and compute token statistics.")
    parser.add_argument("file", metavar="FILE", help="JSONL, JSON, CSV/TSV, plain text, or a folder of .txt files")
    parser.add_argument("--model", metavar="SOURCE", help="ollama:NAME[:TAG], hf:ORG/NAME[@REV], a .gguf or a model folder")
    parser.add_argument("--format", metavar="FMT",
                        help="jsonl|json|csv|tsv|text and/or chat|sharegpt|alpaca|prompt_completion|text|document "
                             "(e.g. csv:alpaca); detected when omitted")
    parser.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN, metavar="N",
                        help=f"tokens per example before truncation (default {DEFAULT_MAX_SEQ_LEN})")
    parser.add_argument("--policy", choices=POLICIES, default="skip",
                        help="skip bad records (default) or fail on them")
    parser.add_argument("--template", "--chat-template", metavar="NAME|FILE",
                        help="chat template override: gemma, llama3, chatml, mistral, phi3, plain, ollama (the Ollama "
                             "model's own TEMPLATE layer), or a Jinja file")
    parser.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                        help="map a column/key to a field, e.g. instruction=question (repeatable)")
    parser.add_argument("--weights", default="gguf", choices=("gguf", "hf", "gguf-quantized"),
                        help="where an Ollama/GGUF source's tokenizer comes from (default gguf)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="B", help="for the steps-per-epoch estimate")
    parser.add_argument("--grad-accum", type=int, default=1, metavar="G", help="for the steps-per-epoch estimate")
    add_json_flag(parser)
    parser.set_defaults(func=run)


def parse_columns(items: list[str]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for item in items:
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise DatasetError(f"--column expects FIELD=COLUMN (e.g. instruction=question), got {item!r}")
        out[field.strip()] = column.strip()
    return out or None


def load_context(source: str, args: argparse.Namespace) -> RenderContext:
    """Separate so tests can swap in an offline tokenizer."""
    return build_render_context(source, settings_from_args(args), template_override=args.template, weights=args.weights)


def _progress_printer() -> Any:
    if not sys.stderr.isatty():
        return None
    last = [-1]

    def show(done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        if pct != last[0]:
            last[0] = pct
            sys.stderr.write(f"\rscanning… {pct:3d}%")
            sys.stderr.flush()
            if pct >= 100:
                sys.stderr.write("\r" + " " * 20 + "\r")

    return show


def _first_record(path: str, args: argparse.Namespace, columns: dict[str, str] | None) -> Record | None:
    fmt = detect_format(path, args.format, columns)
    for item in iter_records(path, fmt=fmt, column_map=columns, limit=1000):
        if not isinstance(item, RecordError):
            return item
    return None


def marked(pieces: list[tuple[str, bool]], color: bool) -> str:
    """Trained spans in green on a terminal, between « » otherwise."""
    if color:
        return "".join(f"\x1b[1;32m{t}\x1b[0m" if trained else t for t, trained in pieces)
    return "".join(f"«{t}»" if trained else t for t, trained in pieces)


def _over_what(stats: Any) -> str:
    if stats.split_documents == stats.over_max_seq_len and stats.split_documents:
        return "split into pieces"
    if stats.split_documents:
        return f"{stats.split_documents} text document(s) split into pieces, the others truncated"
    return "truncated"


def _stats_text(scan: StatsScan, args: argparse.Namespace) -> list[str]:
    s = scan.stats
    return [
        f"tokens    per example: min {s.min} · median {s.median} · p95 {s.p95} · max {s.max}",
        f"          {s.over_max_seq_len} over max_seq_len {args.max_seq_len} ({_over_what(s)}); "
        f"{s.total_trainable:,} trainable tokens in {s.examples} examples",
        f"steps     {steps_per_epoch(s.examples, args.batch_size, args.grad_accum)} per epoch "
        f"(batch {args.batch_size} × accumulation {args.grad_accum})",
    ]


def run(args: argparse.Namespace) -> int:
    columns = parse_columns(args.column)
    if args.max_seq_len < 2:
        raise DatasetError(f"--max-seq-len must be at least 2, got {args.max_seq_len}")
    ctx = load_context(args.model, args) if args.model else None
    scan = scan_token_stats(args.file, ctx.tokenizer if ctx else None, ctx.template if ctx else None,
                            max_seq_len=args.max_seq_len, format=args.format, column_map=columns,
                            progress=None if args.json else _progress_printer(), policy=args.policy)
    first = _first_record(args.file, args, columns)
    pieces = render_for_display(first, ctx.tokenizer, ctx.template, args.max_seq_len) if ctx and first else None
    if args.json:
        print_json(_json(scan, ctx, first, pieces, args))
        return 0
    fmt = scan.format
    print(f"dataset   {args.file}")
    print(f"format    {fmt.shape} ({fmt.container})")
    print(f"records   {scan.total} ({scan.valid} valid, {scan.total - scan.valid} invalid)")
    if ctx:
        print(f"model     {ctx.source}")
        print(f"template  {ctx.template.describe()}")
        if ctx.check.status != "absent":
            print(f"ollama    {ctx.check.status}: {ctx.check.message}")
        for warning in ctx.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print("\n".join(_stats_text(scan, args)))
    else:
        print("tokens    (give --model SOURCE to render examples and count tokens)")
    if first is not None:
        if pieces is not None:
            color = sys.stdout.isatty()
            legend = "trained spans in green" if color else "trained spans between « and »"
            print(f"\nfirst example (line {first.line}; {legend}):")
            print(marked(pieces, color))
        else:
            print(f"\nfirst record (line {first.line}):")
            for m in as_jsonable(first).get("messages", [{"role": "text", "content": getattr(first, "text", "")}]):
                print(f"  [{m['role']}] {m['content']}")
    if scan.errors:
        print(f"\nerrors ({len(scan.errors) + scan.errors_dropped}):")
        for err in scan.errors[:SHOWN_ERRORS]:
            print(f"  line {err.line}: {err.reason}")
        hidden = len(scan.errors) + scan.errors_dropped - SHOWN_ERRORS
        if hidden > 0:
            print(f"  … and {hidden} more (--json lists them)")
    return 0


def _json(scan: StatsScan, ctx: RenderContext | None, first: Record | None,
          pieces: list[tuple[str, bool]] | None, args: argparse.Namespace) -> dict[str, Any]:
    stats = scan.stats.to_dict() if ctx else None
    return {
        "format": scan.format.shape,
        "container": scan.format.container,
        "records": scan.total,
        "valid": scan.valid,
        "invalid": scan.total - scan.valid,
        "errors": [e.to_dict() for e in scan.errors],
        "errors_dropped": scan.errors_dropped,
        "token_stats": stats,
        "max_seq_len": args.max_seq_len,
        "steps_per_epoch": steps_per_epoch(scan.stats.examples, args.batch_size, args.grad_accum) if ctx else None,
        "model": ctx.to_dict() if ctx else None,
        "warnings": ctx.warnings if ctx else [],
        "first_example": None if first is None else {
            **as_jsonable(first),
            "rendered": None if pieces is None else "".join(t for t, _ in pieces),
            "spans": None if pieces is None else [{"text": t, "trained": tr} for t, tr in pieces],
        },
    }
