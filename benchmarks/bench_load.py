"""Benchmark: loading Gemma 3 270M Q4_K_M (model + tokenizer), ours against transformers' own GGUF path.

1. Load time, each side in a fresh subprocess (torch and transformers imported before the clock starts, so only
   the loading is timed): ours is ``load_model(path, dtype="float32")`` (weights + tokenizer); transformers' is
   ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` + ``AutoModelForCausalLM.from_pretrained(dir,
   gguf_file=..., quantization_config=GgufConfig(dequantize=True))``. Wall time and process CPU time (user+sys)
   are both shown: on a shared machine CPU time is the steadier figure. Peak RSS (VmHWM) too.
2. Dequantization throughput per quant type on Gemma's own tensors: our torch kernels (CPU, CUDA when present)
   against ``gguf.quants.dequantize`` (numpy), in MB/s of fp32 output.

Run: ``python benchmarks/bench_load.py [--repeat N] [--json] [--skip-transformers] [--skip-warm] [--dequant-only]``.
Every timed child gets a fresh LLAMAFORGE_DATA_DIR (cold caches); the "cached" rows then reuse it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gemma import gemma_path  # noqa: E402

_PRELUDE = """
import json, resource, sys, time
import torch, transformers
from llamaforge_tui.core.model.memory import peak_rss_bytes
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
path = sys.argv[1]
"""

_OURS = _PRELUDE + """
from llamaforge_tui.core.model.loading import load_model
w0, c0 = time.perf_counter(), cpu()
loaded = load_model(path, dtype="float32", device="cpu", check_memory=False, cache=sys.argv[2] == "cache")
ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
wall, cpu_s = time.perf_counter() - w0, cpu() - c0
with torch.no_grad():
    top = int(loaded.model(ids).logits[0, -1].argmax())
print(json.dumps({"wall": wall, "cpu": cpu_s, "peak_rss": peak_rss_bytes(), "top": top, "ids": ids.tolist()}))
"""

_TRANSFORMERS = _PRELUDE + """
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
p = Path(path)
w0, c0 = time.perf_counter(), cpu()
tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
model = AutoModelForCausalLM.from_pretrained(
    str(p.parent), gguf_file=p.name, dtype=torch.float32,
    quantization_config=GgufConfig(gguf_file=p.name, dequantize=True),
)
ids = tok("The capital of France is", return_tensors="pt").input_ids
wall, cpu_s = time.perf_counter() - w0, cpu() - c0
with torch.no_grad():
    top = int(model(ids).logits[0, -1].argmax())
print(json.dumps({"wall": wall, "cpu": cpu_s, "peak_rss": peak_rss_bytes(), "top": top, "ids": ids.tolist()}))
"""


def run_child(code: str, path: Path, data_dir: str, mode: str = "plain") -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1",
               LLAMAFORGE_DATA_DIR=data_dir)
    res = subprocess.run([sys.executable, "-c", code, str(path), mode], capture_output=True, text=True, env=env,
                         timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def dequant_throughput(path: Path, device: str) -> list[dict]:
    """MB/s of fp32 output per quant type, over all of Gemma's tensors of that type."""
    import gguf
    import numpy as np
    import torch

    from llamaforge_tui.core.gguf import quants
    from llamaforge_tui.core.gguf.file import GgufFile
    from llamaforge_tui.core.model.loading import load_threads

    rows = []
    with GgufFile(path) as g:
        by_type: dict = {}
        for info in g.tensors:
            if info.ggml_type in quants.BLOCK_TYPES:
                by_type.setdefault(info.ggml_type, []).append(info)
        for qtype, infos in sorted(by_type.items(), key=lambda kv: kv[0].name):
            raws = [np.array(g.tensor_array(i)) for i in infos]
            mb = sum(i.n_elements for i in infos) * 4 / 1e6
            t = time.perf_counter()
            for raw, info in zip(raws, infos):
                gguf.quants.dequantize(raw, info.ggml_type)
            numpy_s = time.perf_counter() - t
            tensors = [torch.from_numpy(r.reshape(-1)).to(device) for r in raws]
            for tensor, info in zip(tensors[:2], infos[:2]):  # warm-up (CUDA kernels, allocator)
                quants.dequantize(tensor, info.ggml_type, info.shape)
            if device == "cuda":
                torch.cuda.synchronize()
            with load_threads() as threads:  # what the loader does: no more threads than idle cores
                t = time.perf_counter()
                for tensor, info in zip(tensors, infos):
                    quants.dequantize(tensor, info.ggml_type, info.shape)
                if device == "cuda":
                    torch.cuda.synchronize()
                torch_s = time.perf_counter() - t
            rows.append({"type": qtype.name, "tensors": len(infos), "mb_fp32": round(mb, 1),
                         "numpy_mb_s": round(mb / numpy_s), "torch_mb_s": round(mb / torch_s),
                         "ratio": round(numpy_s / torch_s, 2), "device": device,
                         "torch_threads": threads})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="subprocess runs per side (median reported)")
    parser.add_argument("--skip-transformers", action="store_true", help="time only our loader")
    parser.add_argument("--dequant-only", action="store_true", help="only the dequantization table")
    parser.add_argument("--skip-warm", action="store_true", help="skip the warm-cache runs of our loader")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    path = gemma_path()
    if args.dequant_only:
        args.repeat = 0
    code_by_side = {"ours": _OURS} if args.skip_transformers else {"ours": _OURS, "transformers": _TRANSFORMERS}
    results: dict[str, list[dict]] = {side: [] for side in code_by_side}
    warm_dirs: list[str] = []
    for _ in range(args.repeat):
        for side, code in code_by_side.items():  # interleaved, so a load spike hits both sides alike
            fresh = tempfile.mkdtemp(prefix="lf-bench-")  # cold: no tokenizer or dequantized cache
            results[side].append(run_child(code, path, fresh))
            if side == "ours":
                warm_dirs.append(fresh)
    if args.repeat and not args.skip_warm:
        # the same data dir again: SPM merges cached; then the dequantized-model cache filled and reused
        results["ours, merges cached"] = [run_child(_OURS, path, d) for d in warm_dirs]
        for d in warm_dirs:
            run_child(_OURS, path, d, "cache")
        results["ours, dequant cache hit"] = [run_child(_OURS, path, d, "cache") for d in warm_dirs]
    for d in warm_dirs:
        shutil.rmtree(d, ignore_errors=True)
    summary = {
        side: {key: statistics.median(r[key] for r in runs) for key in ("wall", "cpu", "peak_rss")}
        | {"top": runs[0]["top"], "ids": runs[0]["ids"]}
        for side, runs in results.items() if runs
    }
    out: dict = {"model": path.name, "load": summary, "loadavg_1m": os.getloadavg()[0]}
    if "transformers" in summary and "ours" in summary:
        ours, theirs = summary["ours"], summary["transformers"]
        out["ratio_wall"] = round(ours["wall"] / theirs["wall"], 3)
        out["ratio_cpu"] = round(ours["cpu"] / theirs["cpu"], 3)
        out["same_tokens"] = ours["ids"] == theirs["ids"]
        out["same_top1"] = ours["top"] == theirs["top"]
    import torch

    out["dequant"] = dequant_throughput(path, "cpu")
    if torch.cuda.is_available():
        out["dequant"] += dequant_throughput(path, "cuda")
    if args.json:
        print(json.dumps(out, indent=2))
        return
    if summary:
        print(f"Loading {path.name} (model + tokenizer, fp32, CPU), median of {args.repeat}:")
        print(f"{'':26}{'wall s':>10}{'CPU s':>10}{'peak RSS MiB':>14}")
    for side, s in summary.items():
        print(f"{side:26}{s['wall']:>10.2f}{s['cpu']:>10.2f}{s['peak_rss'] / 2**20:>14.0f}")
    if "ratio_wall" in out:
        print(f"ours / transformers: wall {out['ratio_wall']:.3f}, CPU {out['ratio_cpu']:.3f} "
              f"(target <= 0.2); same tokens: {out['same_tokens']}, same top-1: {out['same_top1']}")
    print(f"1-minute load average during the run: {out['loadavg_1m']:.1f}")
    print("\nDequantization throughput (MB/s of fp32 output):")
    print(f"{'type':8}{'device':8}{'threads':>8}{'tensors':>8}{'MB':>9}{'numpy':>10}{'torch':>10}{'torch/numpy':>13}")
    for r in out["dequant"]:
        print(f"{r['type']:8}{r['device']:8}{r['torch_threads']:>8}{r['tensors']:>8}{r['mb_fp32']:>9}"
              f"{r['numpy_mb_s']:>10}{r['torch_mb_s']:>10}{r['ratio']:>13}")


if __name__ == "__main__":
    main()
