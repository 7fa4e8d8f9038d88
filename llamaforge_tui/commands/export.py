"""`llamaforge export RUN_DIR`: merged GGUF (or LoRA adapter), Modelfile, verification, registration.

Progress goes to stderr (one line per phase, a percentage while writing), so ``--json`` keeps stdout to one
JSON object. A name clash asks before replacing when stdin is a terminal; otherwise it needs ``--force``.
"""

from __future__ import annotations

import argparse
import sys
import threading

from llamaforge_tui.commands.common import add_json_flag, print_json, settings_from_args
from llamaforge_tui.core.export.exporter import EXPORT_TYPES, ExportOptions, ExportProgress, VerificationFailed, export_run
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.ollama.register import NameClash


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write a run as a GGUF for Ollama (merged, or a LoRA adapter), verify and register it",
        description="Merge the run's LoRA into its base and write a GGUF with a Modelfile. --adapter writes a "
                    "small LoRA-adapter GGUF for the unchanged source instead (Ollama's ADAPTER support varies by "
                    "version; the merged GGUF is the safe default). For 4-bit results prefer --adapter or "
                    "--type hybrid, which keep the fine-tune; requantizing the merge to 4 bits wipes much of it.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (or its id)")
    parser.add_argument("--type", dest="out_type", default="auto", choices=EXPORT_TYPES, metavar="TYPE",
                        help=f"output type: {', '.join(EXPORT_TYPES)} (default auto: q8_0 for small models)")
    parser.add_argument("--adapter", action="store_true", help="write a LoRA-adapter GGUF for the source model")
    parser.add_argument("--name", help="Ollama model name (default: from the source and the run)")
    parser.add_argument("--register", action="store_true", help="create the model in the running Ollama server")
    parser.add_argument("--force", action="store_true", help="replace an Ollama model of the same name")
    parser.add_argument("--verify", action="store_true",
                        help="compare llama.cpp on the export with the merged PyTorch model (needs llama-cpp-python)")
    parser.add_argument("--out", dest="out_dir", metavar="DIR", help="output folder (default: RUN_DIR/export)")
    add_json_flag(parser)
    parser.set_defaults(func=run)


class _Printer:
    """Phase lines on stderr; write progress as a percentage that only prints when it moves by 10 %."""

    def __init__(self) -> None:
        self.last_phase = ""
        self.last_pct = -10

    def __call__(self, p: ExportProgress) -> None:
        if p.phase in ("write", "quantize") and p.total:
            if p.phase != self.last_phase:
                self.last_phase, self.last_pct = p.phase, -10
            pct = int(100 * p.done / p.total)
            if pct >= self.last_pct + 10 or pct == 100:
                self.last_pct = pct
                print(f"  {'writing' if p.phase == 'write' else 'quantizing'} {pct:3d}%", file=sys.stderr, flush=True)
            return
        if p.phase == "register" and p.total:
            return
        print(f"{p.phase}: {p.message}", file=sys.stderr, flush=True)


def _ask_replace(name: str) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = input(f"An Ollama model named {name} exists. Replace it? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    options = ExportOptions(out_type=args.out_type, adapter=args.adapter, name=args.name, register=args.register,
                            verify=args.verify, out_dir=args.out_dir, force=args.force)
    stop = threading.Event()
    try:
        result = export_run(args.run_dir, options, settings, progress=_Printer(), stop_event=stop)
    except NameClash as exc:
        if not _ask_replace(exc.name):
            raise
        options.force = True
        result = export_run(args.run_dir, options, settings, progress=_Printer(), stop_event=stop)
    except VerificationFailed as exc:
        if args.json:
            print_json(exc.result.to_dict())
        raise
    if args.json:
        print_json(result.to_dict())
        return 0
    path = result.gguf_path or result.adapter_path
    print(f"wrote {path} ({result.type}, {human_bytes(result.size_bytes)})")
    print(f"wrote {result.modelfile_path}")
    v = result.verification
    if v is not None:
        print(f"verification: top-1 {v.top1_agreement:.1%}, mean KL {v.mean_kl:.2e} over {v.positions} positions: "
              f"{'passed' if v.passed else 'FAILED'}")
        for name, part in v.parts.items():
            print(f"  {name:8s} top-1 {part.top1_agreement:.1%} (gate {part.min_top1:.0%}), mean KL {part.mean_kl:.2e} "
                  f"(gate {part.max_kl:.1e}): {part.what}: {'ok' if part.passed else 'FAILED'}")
        for note in v.notes:
            print(f"  note: {note}")
        if v.sample is not None:
            print(f"  expected:  {v.sample.expected}")
            print(f"  generated: {v.sample.generated}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    if result.registered_as:
        print(f"registered as {result.registered_as}: ollama run {result.registered_as}")
    else:
        print(f"to use it in Ollama: {result.create_command}")
    return 0
