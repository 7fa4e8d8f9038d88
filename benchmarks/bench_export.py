"""Benchmark: exporting Gemma 3 270M to GGUF (F16 and Q8_0), ours next to llama.cpp's reference converter.

The same merged model for every row: a LoRA run on the Gemma 3 270M Q4_K_M GGUF (every linear projection,
r=8; B random, so the merge changes every block matrix), merged once with PEFT and saved as an HF folder
(safetensors) for llama.cpp's ``convert_hf_to_gguf.py`` (from the llama-cpp-python source tarball, run with its
vendored gguf-py). Rows, each in a fresh subprocess (imports done before the clock starts):

- ``ours: run -> GGUF``: ``export_run`` on the run folder (GGUF source: tensor-wise merge into the source file,
  every KV carried over). What a user runs.
- ``ours: HF dir -> GGUF``: our HF-source writer on the merged HF folder (the same input as llama.cpp's).
- ``llama.cpp convert_hf_to_gguf.py``: the reference, same folder, ``--outtype f16|q8_0``.

Peak RSS is the child's VmHWM. Run: ``python benchmarks/bench_export.py [--json] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

_PEAK = """
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
"""

_OURS_RUN = _PEAK + """
import json, sys, time
import numpy, gguf, torch
from pathlib import Path
from llamaforge_tui.core.export.exporter import ExportOptions, export_run
run, out_type, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
t = time.perf_counter()
r = export_run(run, ExportOptions(out_type=out_type, out_dir=out, name="bench"))
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss": peak(), "size": r.size_bytes}))
"""

_OURS_HF = _PEAK + """
import json, sys, time
import numpy, gguf, torch
from pathlib import Path
from llamaforge_tui.core.export.hf import plan_hf_export
from llamaforge_tui.core.gguf.writer import write_gguf
hf, out_type, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
t = time.perf_counter()
kv, plans, close = plan_hf_export(hf, None, None, out_type)
size = write_gguf(out / f"hf-{out_type}.gguf", kv, plans)
close()
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss": peak(), "size": size}))
"""

_LLAMA_CPP = _PEAK + """
import json, os, runpy, sys, time
root, hf, out_type, out = sys.argv[1:5]
sys.path.insert(0, root)
sys.path.insert(1, os.path.join(root, "gguf-py"))
import torch, numpy
import conversion.base as base
def vocab(self):  # the merged folder has the GGUF-derived tokenizer.json, no tokenizer.model
    try:
        self._set_vocab_llama_hf()
    except Exception:
        self.gguf_writer.add_tokenizer_model("llama")
base.TextModel.set_vocab = vocab
for name in ("Gemma3Model",):
    import conversion.gemma as g
    getattr(g, name).set_vocab = vocab
path = os.path.join(out, f"ref-{out_type}.gguf")
sys.argv = ["convert_hf_to_gguf.py", hf, "--outfile", path, "--outtype", out_type]
t = time.perf_counter()
runpy.run_path(os.path.join(root, "convert_hf_to_gguf.py"), run_name="__main__")
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss": peak(), "size": os.path.getsize(path)}))
"""


def _child(code: str, *args: str) -> dict:
    env = dict(os.environ, NO_LOCAL_GGUF="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=1800)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"error": (res.stderr or res.stdout)[-800:]}
    return json.loads(lines[-1])


def _prepare(work: Path) -> tuple[Path, Path]:
    """(run folder, merged HF folder) for Gemma 3 270M."""
    from fixtures.export_runs import make_run, write_chat_jsonl
    from fixtures.ollama_store import gemma_gguf_path

    from llamaforge_tui.core.model import loading

    gemma = gemma_gguf_path()
    run = make_run(work / "run", str(gemma), weights="gguf", data=write_chat_jsonl(work / "qa.jsonl"), r=8, alpha=16,
                   scale=0.01)
    from peft import PeftModel

    loaded = loading.load_model(str(gemma), None, dtype="float32", device="cpu", check_memory=False)
    merged = PeftModel.from_pretrained(loaded.model, str(run / "adapter")).merge_and_unload()
    hf = work / "merged-hf"
    merged.save_pretrained(str(hf), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(hf))
    return run, hf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", metavar="DIR", help="work folder to keep (default: a temporary one)")
    args = ap.parse_args()
    from fixtures.tiny_models import llama_cpp_source

    work = Path(args.keep or tempfile.mkdtemp(prefix="lf-bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    lcpp = llama_cpp_source(Path("/tmp/lf-tiny-models"))
    try:
        t = time.perf_counter()
        run, hf = _prepare(work)
        print(f"prepared run + merged HF folder in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        rows = []
        for out_type in ("f16", "q8_0"):
            for label, code, argv in (
                ("ours: run -> GGUF", _OURS_RUN, [str(run), out_type]),
                ("ours: HF dir -> GGUF", _OURS_HF, [str(hf), out_type]),
                ("llama.cpp convert_hf_to_gguf.py", _LLAMA_CPP, [str(lcpp), str(hf), out_type] if lcpp else None),
            ):
                out = work / "out" / f"{label.split(':')[0].split()[0]}-{out_type}-{len(rows)}"
                out.mkdir(parents=True, exist_ok=True)
                res = _child(code, *argv, str(out)) if argv else {"error": "llama.cpp source tarball not found"}
                rows.append({"type": out_type, "tool": label, **res})
                print(f"{out_type:5s} {label:34s} {res}", file=sys.stderr)
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print(f"{'type':5s}  {'tool':34s} {'seconds':>8s} {'peak RSS':>10s} {'size':>10s}  vs llama.cpp")
            for row in rows:
                if "error" in row:
                    print(f"{row['type']:5s}  {row['tool']:34s} error: {row['error'].splitlines()[-1][:60]}")
                    continue
                ref = next((r for r in rows if r["type"] == row["type"] and r["tool"].startswith("llama.cpp")
                            and "error" not in r), None)
                ratio = (f"time x{row['seconds'] / ref['seconds']:.2f}, RSS x{row['peak_rss'] / ref['peak_rss']:.2f}"
                         if ref else "")
                print(f"{row['type']:5s}  {row['tool']:34s} {row['seconds']:8.1f} {row['peak_rss'] / 1e6:8.0f}MB "
                      f"{row['size'] / 1e6:8.0f}MB  {ratio}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
