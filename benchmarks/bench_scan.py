"""Benchmark: scanning an Ollama store of 100 models, and our GGUF header read against ``gguf.GGUFReader``.

The store is synthetic but shaped like a real one: each model blob is a real GGUF header (full vocabulary,
every tensor's info, realistic KV) of one of five common models (Llama 3.1 8B, Qwen2.5 7B, Gemma 3 4B, Phi-3
mini, Llama 3.2 1B), followed by a sparse hole up to the real file size (1-8 GB each, ~0.4 TB apparent, a few
hundred MB on disk). Each blob is its own file, named by a sha256, with a manifest, template and params layer.

Reports:
1. ``scan_models`` wall time for the whole store (manifests, GGUF summaries, base mapping, HF cache status),
   first run and warm runs.
2. Per model shape: our summary (``GgufFile`` + ``summarize``) vs ``gguf.GGUFReader(path)`` on the same file,
   as a ratio (how many times faster ours is).

Run: ``python benchmarks/bench_scan.py [--models 100] [--store DIR] [--reader-files 1]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import gguf  # noqa: E402
from fixtures.gguf_factory import BIG_SPECS, write_sparse_gguf  # noqa: E402

from llamaforge_tui.core.fsutil import human_bytes  # noqa: E402
from llamaforge_tui.core.gguf.info import summarize_gguf  # noqa: E402
from llamaforge_tui.core.model.basemodel import scan_models  # noqa: E402
from llamaforge_tui.core.settings import Settings  # noqa: E402

# Ollama names for each shape; tags cycle so the 100 models have distinct names.
OLLAMA_NAMES = {"llama3.1-8b": "llama3.1", "qwen2.5-7b": "qwen2.5", "gemma3-4b": "gemma3", "phi3-3.8b": "phi3",
                "llama3.2-1b": "llama3.2"}
MT = "application/vnd.ollama.image."


def _blob(root: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return f"sha256:{digest}", len(data)


def build_store(root: Path, n_models: int) -> dict[str, Path]:
    """Write the store; returns one template blob path per shape (for the reader comparison)."""
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    templates: dict[str, Path] = {}
    headers: dict[str, tuple[bytes, int]] = {}
    work = root.parent / "templates"
    for key, spec in BIG_SPECS.items():
        path = write_sparse_gguf(work / f"{key}.gguf", spec)
        size = path.stat().st_size
        with path.open("rb") as fh:  # the header is everything before the sparse hole; read up to 16 MB
            header = fh.read(16 * 1024 * 1024).rstrip(b"\0")
        headers[key] = (header, size)
        templates[key] = path
    template_layer = _blob(root, b"{{ .Prompt }}")
    params_layer = _blob(root, json.dumps({"stop": ["<|eot_id|>"]}).encode())
    keys = list(BIG_SPECS)
    for i in range(n_models):
        key = keys[i % len(keys)]
        header, size = headers[key]
        digest = hashlib.sha256(f"{key}-{i}".encode()).hexdigest()  # distinct files; hashing GBs is not the point
        blob = root / "blobs" / f"sha256-{digest}"
        with blob.open("wb") as fh:
            fh.write(header)
            fh.truncate(size)
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               "digest": template_layer[0], "size": template_layer[1]},
                    "layers": [{"mediaType": MT + "model", "digest": f"sha256:{digest}", "size": size},
                               {"mediaType": MT + "template", "digest": template_layer[0], "size": template_layer[1]},
                               {"mediaType": MT + "params", "digest": params_layer[0], "size": params_layer[1]}]}
        layout, host = ("manifests-v2", "ollama.com") if i % 2 else ("manifests", "registry.ollama.ai")
        path = root / layout / host / "library" / OLLAMA_NAMES[key] / f"tag{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest))
    return templates


def _time(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--store", type=Path, default=None, help="build the store here and keep it")
    ap.add_argument("--reader-files", type=int, default=1, help="GGUFReader runs per shape (it is slow)")
    args = ap.parse_args()

    base = args.store or Path(tempfile.mkdtemp(prefix="lf-bench-scan-"))
    root = base / "models"
    start = time.perf_counter()
    templates = build_store(root, args.models)
    blobs = [p for p in (root / "blobs").iterdir() if p.stat().st_size > 1e8]
    apparent = sum(p.stat().st_size for p in blobs)
    on_disk = sum(p.stat().st_blocks * 512 for p in blobs)
    print(f"store: {args.models} models, {len(blobs)} GGUF blobs, {human_bytes(apparent)} apparent, "
          f"{human_bytes(on_disk)} on disk (built in {time.perf_counter() - start:.1f} s) at {root}")

    os.environ["LLAMAFORGE_DATA_DIR"] = str(base / "data")  # the summary cache goes here, not in the user's folder
    settings = Settings(models_dirs=[str(root)], hf_cache_dir=str(base / "hf-cache"))
    headers = statistics.median(_time(lambda: scan_models(settings, use_summary_cache=False), 3))
    scan = scan_models(settings)  # fills the summary cache
    cached = statistics.median(_time(lambda: scan_models(settings), 3))
    n = len(scan.models)
    ok = sum(m.status == "ok" for m in scan.models)
    print(f"\nscan_models, {n} models ({ok} ok), median of 3:")
    print(f"  reading every header     {headers:7.3f} s  ({headers / n * 1000:.1f} ms per model)")
    print(f"  with the summary cache   {cached:7.3f} s  ({cached / n * 1000:.2f} ms per model; "
          f"{headers / cached:.0f}x faster)")

    print(f"\n{'model shape':<14} {'file size':>10} {'vocab':>8} {'ours (s)':>9} {'GGUFReader (s)':>15} {'ratio':>8}")
    ratios = []
    for key, path in templates.items():
        ours = statistics.median(_time(lambda p=path: summarize_gguf(p), 5))
        ref = statistics.median(_time(lambda p=path: gguf.GGUFReader(str(p)), args.reader_files))
        summary = summarize_gguf(path)
        ratios.append(ref / ours)
        print(f"{key:<14} {human_bytes(path.stat().st_size):>10} {summary.vocab_size:>8} {ours:>9.4f} {ref:>15.3f} "
              f"{ref / ours:>7.0f}x")
    print(f"{'geomean':<14} {'':>10} {'':>8} {'':>9} {'':>15} {statistics.geometric_mean(ratios):>7.0f}x")
    if args.store is None:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
