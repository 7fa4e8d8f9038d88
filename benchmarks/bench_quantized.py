"""Benchmark: training LoRA on quantized GGUF weights (`gguf-quantized`) against the dequantized path (`gguf`).

1. Kernel throughput per quant type: our torch dequantization (CPU, and CUDA when present) against
   ``gguf.quants.dequantize`` (numpy), as ratios (higher = faster than numpy).
2. For Gemma 3 270M Q4_K_M, each weight source in its own subprocess (so peak RSS is its own): base weight bytes,
   peak RSS after loading and after training, LoRA training tokens/s, side by side, with the ratios.

Run: ``python benchmarks/bench_quantized.py [--device cpu|cuda] [--steps N] [--seq-len T] [--batch B]``.
On a machine without the real model (a GPU box), ``--save-header FILE`` here and ``--synthetic FILE`` there rebuild
a file with Gemma's exact header, tensor types and offsets, and random valid blocks (speed/memory carry over).

Measured 2026-11-27 on one H100 box (16 CPU cores), synthetic Gemma layout, fp32, LoRA r=16:
- kernels vs numpy: torch CPU 3.2x (Q3_K) to 24x (Q8_0); torch CUDA 54x (Q4_K) to 166x (Q4_0).
- CUDA, batch 4 x 512: base weights 235 MiB vs 1023 MiB (0.23x); peak CUDA memory 0.78x; tokens/s 0.48x.
- CPU, batch 1 x 128: base 0.23x; peak RSS 0.60x (growth over the loaded libraries 0.36x); tokens/s 0.69x.
(These GPU/CPU rows predate the one-pass head loss, which removed one of three head matmuls.)
Real Gemma, 2 busy CPU cores, batch 1 x 64: peak RSS 1018 vs 1843 MiB (0.55x), same losses (17.72 -> 14.76).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gemma import gemma_path  # noqa: E402


def save_header(src: Path, dst: Path) -> None:
    """Keep a GGUF's header (metadata, tokenizer, tensor table) and its size: a few MB that travel where the
    246 MB model cannot (the GPU machine), to rebuild a file of the same layout with ``synthesize``."""
    from llamaforge_tui.core.gguf.file import GgufFile

    with GgufFile(src) as gf:
        head = src.open("rb").read(gf.data_offset)
        size = gf.file_size
    dst.write_bytes(size.to_bytes(8, "little") + head)


def synthesize(header: Path, out: Path, seed: int = 0) -> Path:
    """A GGUF with the saved header and random but valid tensor data (small finite scales, small F32 values):
    the same tensor types, shapes and offsets as the original, so memory and speed figures carry over."""
    from llamaforge_tui.core.gguf import quants
    from llamaforge_tui.core.gguf.file import GgufFile

    blob = header.read_bytes()
    size = int.from_bytes(blob[:8], "little")
    with out.open("wb") as fh:
        fh.write(blob[8:])
        fh.truncate(size)
    rng = np.random.default_rng(seed)
    with GgufFile(out) as gf, out.open("r+b") as fh:
        for info in gf.tensors:
            qt = info.ggml_type
            if qt in quants.BLOCK_TYPES:
                _, type_size = quants.block_layout(qt)
                data = rng.integers(0, 256, size=(info.nbytes // type_size, type_size), dtype=np.uint8)
                for off in quants.SCALE_OFFSETS[qt]:
                    scale = (rng.standard_normal(data.shape[0]) * 2e-3).astype(np.float16)
                    data[:, off : off + 2] = scale.view(np.uint8).reshape(-1, 2)
            else:
                dtype = {"F32": np.float32, "F16": np.float16}[qt.name]
                data = (rng.standard_normal(info.n_elements) * 0.02).astype(dtype)
            fh.seek(info.offset)
            fh.write(data.tobytes())
    return out


# ------------------------------------------------------------------------------------------ kernels


def _best(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_kernels(values: int, repeats: int, cuda: bool) -> list[dict]:
    import torch
    from gguf import GGML_QUANT_SIZES
    from gguf import quants as gq

    from llamaforge_tui.core.gguf import quants

    rng = np.random.default_rng(0)
    rows = []
    for qtype in sorted(quants.BLOCK_TYPES, key=int):
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        n_blocks = values // block_size
        raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
        # finite fp16 scales where the layout has them (NaN/inf would only slow both sides down)
        for off in quants.SCALE_OFFSETS[qtype]:
            raw[:, off : off + 2] = (rng.standard_normal(n_blocks) * 0.01).astype(np.float16).view(np.uint8).reshape(-1, 2)
        raw = raw.reshape(256, -1)
        shape = (256, raw.shape[1] // type_size * block_size)
        t_np = _best(lambda: gq.dequantize(raw, qtype), repeats)
        src = torch.from_numpy(raw)
        quants.dequantize(src, qtype, shape)
        t_cpu = _best(lambda: quants.dequantize(src, qtype, shape), repeats)
        row = {"type": qtype.name, "values": shape[0] * shape[1], "numpy_s": t_np, "torch_cpu_s": t_cpu}
        if cuda:
            dev = src.cuda()
            quants.dequantize(dev, qtype, shape)
            torch.cuda.synchronize()

            def run_cuda() -> None:
                quants.dequantize(dev, qtype, shape)
                torch.cuda.synchronize()

            row["torch_cuda_s"] = _best(run_cuda, repeats * 3)
        rows.append(row)
    return rows


def print_kernels(rows: list[dict]) -> None:
    cuda = "torch_cuda_s" in rows[0]
    head = f"{'type':<6} {'numpy GB/s':>11} {'torch CPU GB/s':>15} {'CPU/numpy':>10}"
    if cuda:
        head += f" {'torch CUDA GB/s':>16} {'CUDA/numpy':>11}"
    print("\nDequantization throughput (fp32 output bytes per second)")
    print(head)
    for r in rows:
        gb = r["values"] * 4 / 1e9
        line = f"{r['type']:<6} {gb / r['numpy_s']:>11.2f} {gb / r['torch_cpu_s']:>15.2f} {r['numpy_s'] / r['torch_cpu_s']:>9.2f}x"
        if cuda:
            line += f" {gb / r['torch_cuda_s']:>16.1f} {r['numpy_s'] / r['torch_cuda_s']:>10.1f}x"
        print(line)


# ------------------------------------------------------------------------------------------ model runs


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(weights: str, device: str, steps: int, seq_len: int, batch: int) -> dict:
    """Load Gemma 3 270M with ``weights``, then train LoRA for ``steps``; report memory and speed."""
    import torch

    from llamaforge_tui.core.model.quantized import base_weight_bytes

    import peft  # noqa: F401 - libraries in the baseline, so the growth is weights and activations
    import transformers  # noqa: F401

    path = gemma_path()
    rss0 = _rss_peak_bytes()
    t0 = time.perf_counter()
    model = load(path, weights, device)
    load_s = time.perf_counter() - t0
    rss_load = _rss_peak_bytes()
    base = base_weight_bytes(model)

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, task_type="CAUSAL_LM"))
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    from llamaforge_tui.core.train.loss import loss_module

    loss_fn = loss_module(peft_model.get_base_model())  # the trainer's own loss (chunked head, no full logits)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    positions = torch.arange(seq_len, device=device).expand(batch, seq_len)
    targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)

    def step() -> float:
        loss = loss_fn(ids, positions, targets) / (batch * (seq_len - 1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    first = step()  # warm-up (allocations, kernel selection)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        last = step()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out = {
        "weights": weights, "device": device, "load_s": load_s, "base_bytes": base,
        "rss_before": rss0, "rss_after_load": rss_load, "rss_peak": _rss_peak_bytes(),
        "rss_growth": _rss_peak_bytes() - rss0,
        "tokens_per_s": batch * seq_len * steps / elapsed, "first_loss": first, "last_loss": last,
        "gguf_tensor_bytes": _gguf_tensor_bytes(path),
    }
    if device == "cuda":
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def _gguf_tensor_bytes(path: Path) -> int:
    from llamaforge_tui.core.gguf.file import GgufFile

    with GgufFile(path) as gf:
        return sum(t.nbytes for t in gf.tensors)


def load(path: Path, weights: str, device: str):  # noqa: ANN201
    """Load through the product's loader (core.loading.load_model), fp32 on the chosen device."""
    from llamaforge_tui.core.model.loading import load_model
    from llamaforge_tui.core.settings import Settings

    settings = Settings.load() if hasattr(Settings, "load") else Settings()
    loaded = load_model(str(path), settings, weights=weights, dtype="float32", device=device)
    return loaded.model


def run_child(weights: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", weights, "--device", args.device, "--steps", str(args.steps),
           "--seq-len", str(args.seq_len), "--batch", str(args.batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{weights} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_models(deq: dict, qnt: dict) -> None:
    mib = 1024 * 1024

    def row(label: str, key: str, scale: float = mib, fmt: str = "{:>12.1f}") -> None:
        a, b = deq[key] / scale, qnt[key] / scale
        print(f"{label:<30}" + fmt.format(a) + fmt.format(b) + f"{b / a:>11.2f}x")

    print(f"\nGemma 3 270M Q4_K_M, LoRA r=16 on all block linears, device={deq['device']}, "
          f"GGUF tensor bytes {deq['gguf_tensor_bytes'] / mib:.1f} MiB")
    print(f"{'':<30}{'gguf (fp32)':>12}{'gguf-quant':>12}{'quant/deq':>12}")
    row("base weights held (MiB)", "base_bytes")
    row("peak RSS after load (MiB)", "rss_after_load")
    row("peak RSS after training (MiB)", "rss_peak")
    row("  minus RSS before loading (MiB)", "rss_growth")
    if "cuda_peak" in deq:
        row("peak CUDA memory, train (MiB)", "cuda_peak")
    row("load time (s)", "load_s", 1.0, "{:>12.2f}")
    row("training tokens/s", "tokens_per_s", 1.0, "{:>12.1f}")
    print(f"{'base / GGUF tensor bytes':<30}{deq['base_bytes'] / deq['gguf_tensor_bytes']:>12.2f}"
          f"{qnt['base_bytes'] / qnt['gguf_tensor_bytes']:>12.2f}")
    print(f"{'loss first -> last':<30}{deq['first_loss']:>6.2f}->{deq['last_loss']:<5.2f}"
          f"{qnt['first_loss']:>6.2f}->{qnt['last_loss']:<5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--kernel-values", type=int, default=1 << 22)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--child", choices=["gguf", "gguf-quantized"])
    parser.add_argument("--save-header", metavar="FILE", help="write Gemma's header for --synthetic, then exit")
    parser.add_argument("--synthetic", metavar="HEADER", help="run the model part on a synthetic copy of Gemma")
    args = parser.parse_args()
    if args.save_header:
        save_header(gemma_path(), Path(args.save_header))
        return
    if args.synthetic:
        target = Path(os.environ.get("TMPDIR", "/tmp")) / "lf-bench-synthetic-gemma.gguf"
        os.environ["LF_BENCH_GGUF"] = str(synthesize(Path(args.synthetic), target))
        print(f"synthetic Gemma 3 270M layout (random weights): {target}")
    if args.child:
        print(json.dumps(child(args.child, args.device, args.steps, args.seq_len, args.batch)))
        return
    if not args.skip_kernels:
        print_kernels(bench_kernels(args.kernel_values, args.repeats, args.device == "cuda"))
    if not args.skip_models:
        deq = run_child("gguf", args)
        qnt = run_child("gguf-quantized", args)
        print_models(deq, qnt)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
