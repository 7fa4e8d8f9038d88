"""K-quants (Q4_K_M, Q5_K_M, Q6_K) through llama.cpp's own quantizer, when ``llama-cpp-python`` is installed.

No numpy K-quantizer exists (FORMATS.md §1), and reimplementing llama.cpp's mixed-precision recipes
(which tensors get Q6_K in Q4_K_M...) would drift from the reference. So the merged model is written as
F16 to a temporary file and handed to ``llama_model_quantize`` in a child process (``llama_runner``: a native
crash there is reported, not fatal), whose output is renamed into place only when it succeeds.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from llamaforge_tui.core.export import llama_runner
from llamaforge_tui.core.gguf.writer import ExportError

KQUANT_TYPES = ("q4_k_m", "q5_k_m", "q6_k")
INSTALL_HINT = llama_runner.INSTALL_HINT


def kquant_available() -> bool:
    return llama_runner.llama_cpp_installed()


def quantize_file(src: Path | str, dst: Path | str, out_type: str, *, threads: int | None = None,
                  on_progress: Callable[[int, int], None] | None = None,
                  stop_event: threading.Event | None = None) -> int:
    """Quantize the GGUF ``src`` to ``out_type`` at ``dst`` (atomic); returns the output size."""
    if out_type not in KQUANT_TYPES:
        raise ExportError(f"{out_type} is not a K-quant type ({', '.join(KQUANT_TYPES)})")
    if not kquant_available():
        raise ExportError(f"{out_type.upper()} needs llama.cpp's quantizer: install it with {INSTALL_HINT}, "
                          "or export q8_0/q4_0/q5_0 (pure Python)")
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    os.close(fd)
    try:
        llama_runner.quantize_file(
            src, tmp, out_type, threads=threads or max(1, os.cpu_count() or 1), on_progress=on_progress,
            stop_event=stop_event,
            file_note=f"Nothing was written to {dst} (export q8_0, written without llama.cpp, as a fallback).")
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dst.stat().st_size
