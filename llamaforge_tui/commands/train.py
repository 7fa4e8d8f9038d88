"""`llamaforge train` (headless LoRA training) and `llamaforge runs` (the runs and their status).

The first Ctrl-C asks the run to stop after its current step (it saves a checkpoint and the adapter);
a second one aborts. With ``--nproc N`` the command relaunches itself under torchrun; the launcher
then turns Ctrl-C into a stop request in the run folder, which the workers all honour at the same step.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from llamaforge_tui.commands.common import add_json_flag, print_json, settings_from_args
from llamaforge_tui.core.train import runs
from llamaforge_tui.core.errors import ConfigError
from llamaforge_tui.core.train.events import (CheckpointSaved, EvalLogged, EvalSummary, Event, LogLine, RunFailed,
                                        RunFinished, RunStarted, StepLogged)
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.train.config import TrainConfig

# option -> (TrainConfig field, type); applied over the config file when given.
OVERRIDES: dict[str, tuple[str, Any]] = {
    "model": ("model", str), "data": ("data", str), "weights": ("weights", str), "format": ("data_format", str),
    "steps": ("max_steps", int), "epochs": ("epochs", float), "out": ("output_dir", str),
    "lr": ("learning_rate", float), "lora_r": ("lora_r", int), "lora_alpha": ("lora_alpha", float),
    "lora_dropout": ("lora_dropout", float), "batch_size": ("batch_size", int), "grad_accum": ("grad_accum", int),
    "max_seq_len": ("max_seq_len", int), "seed": ("seed", int), "eval_split": ("eval_split", float),
    "log_every": ("log_every", int), "save_every": ("save_every", int), "eval_every": ("eval_every", int),
    "scheduler": ("scheduler", str), "warmup_steps": ("warmup_steps", int), "dtype": ("dtype", str),
    "device": ("device", str), "nproc": ("nproc", int), "chat_template": ("chat_template", str),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="fine-tune a model with LoRA (headless)",
                                   description="Fine-tune a model with LoRA. Ctrl-C stops with a checkpoint; "
                                               "a second Ctrl-C aborts.")
    parser.add_argument("--model", metavar="SOURCE", help="ollama:NAME[:TAG], hf:ORG/NAME[@REV], a .gguf or an HF folder")
    parser.add_argument("--data", metavar="FILE", help="dataset (JSONL, JSON, CSV or text)")
    parser.add_argument("--weights", choices=("gguf", "hf", "gguf-quantized"), help="where GGUF/Ollama weights come from")
    parser.add_argument("--config", metavar="FILE", help="a TOML or YAML TrainConfig; options override it")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, metavar="N", help="optimizer steps (overrides epochs)")
    steps.add_argument("--epochs", type=float, metavar="E", help="passes over the data (default 1)")
    parser.add_argument("--out", metavar="RUN_DIR", help="the run folder (default: a new folder under the runs dir)")
    for flag, field_type, meta, text in (
            ("--lr", float, "LR", "peak learning rate (default 2e-4)"),
            ("--lora-r", int, "R", "LoRA rank (default 16)"),
            ("--lora-alpha", float, "A", "LoRA alpha (default 32)"),
            ("--lora-dropout", float, "P", "LoRA dropout (default 0)"),
            ("--batch-size", int, "B", "micro-batch size per process (default 4)"),
            ("--grad-accum", int, "G", "micro-batches per optimizer step (default 1)"),
            ("--max-seq-len", int, "N", "longest example in tokens; longer ones are cut (default 1024)"),
            ("--seed", int, "S", "seed for the split, the data order, LoRA init and dropout (default 0)"),
            ("--eval-split", float, "F", "fraction held out for evaluation (default 0)"),
            ("--log-every", int, "N", "a progress line every N steps (default 1)"),
            ("--save-every", int, "N", "a checkpoint every N steps, 0: only at the end (default 50)"),
            ("--eval-every", int, "N", "evaluate every N steps, 0: at the end (default 0)"),
            ("--warmup-steps", int, "N", "linear warmup steps (default 3%% of the steps)"),
            ("--nproc", int, "N", "train with N processes (DDP through torchrun)")):
        parser.add_argument(flag, type=field_type, metavar=meta, help=text)
    parser.add_argument("--format", help="dataset format (default: detect)")
    parser.add_argument("--chat-template", metavar="NAME", help="override the chat template (family, file or Jinja)")
    parser.add_argument("--scheduler", choices=("cosine", "linear", "constant"))
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--device", help="auto (a CUDA or ROCm GPU, else the Apple GPU, else the CPU), cpu, cuda, "
                        "cuda:N or mps; the run's log says which and why")
    parser.add_argument("--packing", action="store_true", help="pack examples into max_seq_len rows "
                        "(default: length-grouped batches)")
    parser.add_argument("--no-packing", action="store_true", help="length-grouped padded batches (the default)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    parser.add_argument("--compile", choices=("auto", "on", "off"), help="torch.compile the decoder layers "
                        "(auto, as measured: on for CUDA; on a CPU, after 3 eager steps when the rest would take 5 min or more; "
                        "falls back to eager if compiling fails)")
    parser.add_argument("--head-kernel", choices=("auto", "compiled", "eager"), help="the head loss's softmax "
                        "kernel (auto: eager, as measured; compiled: fused by torch.compile)")
    parser.add_argument("--fused", choices=("auto", "on", "off"), help="RMSNorm and gated-MLP activations that "
                        "keep less for backward (same forward, checked bit for bit; auto: on for the CPU, as "
                        "measured)")
    parser.add_argument("--recompute", choices=("auto", "on", "off"), help="rebuild norm outputs and the MLP's "
                        "act(gate) * up in backward instead of keeping them (less activation memory, the same "
                        "gradients; auto: on for the CPU, as measured)")
    parser.add_argument("--attention", choices=("auto", "matmul", "sdpa"), help="attention on a CPU: query heads "
                        "folded into batched matmuls, or SDPA's flash kernel (auto: matmul where the layers are "
                        "compiled on a CPU, as measured; sdpa everywhere else)")
    parser.add_argument("--pass-tokens", type=int, metavar="N", help="tokens per forward pass: a wider "
                        "micro-batch runs as groups of rows, gradients summed (the same step, less memory; auto: "
                        "1024 on the CPU, as measured, no split elsewhere; 0: never split)")
    parser.add_argument("--plan", action="store_true", help="print the plan (steps, memory estimate, fit, ETA) "
                        "without training")
    parser.add_argument("--eval-at-end", action=argparse.BooleanOptionalAction, default=None,
                        help="after the last step, base vs tuned loss and perplexity (default: on when the run "
                             "has an eval split; --eval-at-end without one measures the training data)")
    add_json_flag(parser)
    parser.set_defaults(func=run_train)
    # `llamaforge runs` (list, show, delete, prune, compare) is registered by commands/runs.py.


# -- config from the command line ------------------------------------------------------------------
def build_config(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """Config file (or ``base``), then the options given on the command line."""
    config = base or (TrainConfig.from_file(args.config) if args.config else TrainConfig())
    changes: dict[str, Any] = {}
    for option, (field_name, _) in OVERRIDES.items():
        value = getattr(args, option, None)
        if value is not None:
            changes[field_name] = value
    if getattr(args, "steps", None) is None and getattr(args, "epochs", None) is not None:
        changes["max_steps"] = None  # --epochs beats a max_steps from the config file
    if getattr(args, "packing", False):
        changes["packing"] = True
    if getattr(args, "no_packing", False):
        changes["packing"] = False
    if getattr(args, "gradient_checkpointing", False):
        changes["gradient_checkpointing"] = True
    for option in ("compile", "head_kernel", "fused", "recompute", "attention", "pass_tokens"):
        if getattr(args, option, None) is not None:
            changes[option] = getattr(args, option)
    if getattr(args, "eval_at_end", None) is not None:
        changes["eval_at_end"] = args.eval_at_end
    return config.replace(**changes) if changes else config


def _resume_config(args: argparse.Namespace, run_dir: Path) -> TrainConfig:
    saved = TrainConfig.from_file(run_dir / runs.CONFIG_FILE)
    if args.model or args.data or args.config:
        raise ConfigError("--resume continues a run with its own config; drop --model/--data/--config")
    return build_config(args, base=saved).replace(output_dir=str(run_dir))


# -- output ----------------------------------------------------------------------------------------
def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_event(event: Event) -> str | None:
    """One human line per event (None: nothing worth a line)."""
    if isinstance(event, StepLogged):
        mem = f"  mem {human_bytes(event.memory_bytes)}" if event.memory_bytes else ""
        return (f"step {event.step}/{event.total_steps}  epoch {event.epoch:.2f}  loss {event.loss:.4f}  "
                f"lr {event.lr:.2e}  grad {event.grad_norm:.3f}  {event.tokens_per_second:,.0f} tok/s  "
                f"eta {_duration(event.eta_seconds)}{mem}")
    if isinstance(event, RunStarted):
        ds = event.dataset
        resumed = f", resumed at step {event.resumed_from_step}" if event.resumed_from_step else ""
        return (f"run {event.run_id}: {event.total_steps} steps, {event.trainable_params:,} trainable of "
                f"{event.total_params:,} parameters, {ds.get('train_examples', '?')} train / "
                f"{ds.get('eval_examples', 0)} eval examples, {event.world_size} process(es){resumed}\n"
                f"  folder: {event.run_dir}")
    if isinstance(event, EvalLogged):
        return f"eval  step {event.step}  loss {event.eval_loss:.4f}"
    if isinstance(event, EvalSummary):
        from llamaforge_tui.core.infer.eval_format import summary_line

        return summary_line(event)
    if isinstance(event, CheckpointSaved):
        return f"checkpoint  {event.path}"
    if isinstance(event, LogLine):
        return event.message if event.level in ("info", "warning", "error") else None
    if isinstance(event, RunFinished):
        loss = f"{event.final_loss:.4f}" if event.final_loss is not None else "n/a"
        how = "stopped" if event.stopped else "finished"
        return f"{how} at step {event.step}/{event.total_steps}, loss {loss}, adapter {event.adapter_path}"
    if isinstance(event, RunFailed):
        return None  # printed as the command's error line
    return None


def _printer(as_json: bool) -> Any:
    def emit(event: Event) -> None:
        if as_json:
            sys.stdout.write(event.to_json() + "\n")
        else:
            line = format_event(event)
            if line is None:
                return
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    return emit


class _Interrupts:
    """First SIGINT/SIGTERM: set the stop event. Second SIGINT: abort (KeyboardInterrupt)."""

    def __init__(self, stop_event: threading.Event, quiet: bool) -> None:
        self.stop_event, self.quiet = stop_event, quiet
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop_event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_event.set()
        if not self.quiet:
            print("stopping after this step (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# -- commands --------------------------------------------------------------------------------------
def run_train(args: argparse.Namespace) -> int:
    from llamaforge_tui.core.train import distributed

    settings = settings_from_args(args)
    resume_dir: Path | None = None
    if args.resume:
        resume_dir = runs.find_run(settings, args.resume)
        config = _resume_config(args, resume_dir)
    else:
        config = build_config(args)
        config.require_inputs()
    if getattr(args, "plan", False):
        return _print_plan(args, config, settings)
    worker = distributed.env_dist_info()
    if config.nproc > 1 and not worker.enabled:
        return _launch_workers(args, config, settings, resume_dir)
    if worker.enabled and worker.world_size != config.nproc:
        config = config.replace(nproc=worker.world_size)
    from llamaforge_tui.core.train.trainer import run

    stop_event = threading.Event()
    emit = _printer(args.json) if worker.is_main else (lambda event: None)
    with _Interrupts(stop_event, quiet=args.json or not worker.is_main):
        result = run(config, emit, stop_event, resume_from=resume_dir, settings=settings)
    if result.status == "failed":
        if worker.is_main:
            print(f"error: {result.reason}", file=sys.stderr)
        return 1
    return 0


def _print_plan(args: argparse.Namespace, config: TrainConfig, settings: Any) -> int:
    """``train --plan``: what the run would take, from the data's real token lengths; nothing is trained."""
    from llamaforge_tui.core.train.plan import plan_run

    plan = plan_run(config, settings)
    if args.json:
        print_json(plan.to_json())
    else:
        print("\n".join(plan.lines()))
    return 0


def _launch_workers(args: argparse.Namespace, config: TrainConfig, settings: Any, resume_dir: Path | None) -> int:
    """Re-run this command under torchrun with --nproc workers. Ctrl-C becomes a stop request; a second
    Ctrl-C kills the workers."""
    from llamaforge_tui.core.train import distributed

    if resume_dir is not None:
        run_dir = resume_dir
        config.to_file(run_dir / runs.CONFIG_FILE)
        cli = ["train", "--resume", str(run_dir)]
    else:
        run_dir = runs.resolve_run_dir(settings, config.output_dir, config.model)
        run_dir.mkdir(parents=True, exist_ok=True)
        launch_cfg = config.replace(output_dir=str(run_dir)).to_file(run_dir / runs.CONFIG_FILE)
        cli = ["train", "--config", str(launch_cfg)]
    cli += ["--json"] if args.json else []
    for name in ("models_dir",):
        for value in getattr(args, name, None) or []:
            cli += ["--models-dir", value]
    if getattr(args, "cache_dir", None):
        cli += ["--cache-dir", args.cache_dir]
    import subprocess

    cmd = distributed.torchrun_command(config.nproc, cli)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS",
                                                           str(max(1, (os.cpu_count() or 1) // config.nproc)))}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    presses = 0
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            presses += 1
            if presses == 1:
                runs.request_stop(run_dir)
                if not args.json:
                    print("stopping after this step (Ctrl-C again to abort)", file=sys.stderr, flush=True)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return 130


def run_runs(args: argparse.Namespace) -> int:
    summaries = runs.list_runs(settings_from_args(args))
    if args.json:
        print_json([s.to_dict() for s in summaries])
        return 0
    if not summaries:
        print(f"no runs yet in {settings_from_args(args).runs_path}")
        return 0
    rows = [("RUN", "STATUS", "STEP", "LOSS", "STARTED", "SOURCE")]
    for s in summaries:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.started)) if s.started else "?"
        loss = f"{s.final_loss:.4f}" if s.final_loss is not None else "-"
        rows.append((s.run_id, s.status, f"{s.step}/{s.total_steps}", loss, started, s.source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return 0
