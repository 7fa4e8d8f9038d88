"""K-quants (Q4_K_M, Q5_K_M, Q6_K) through llama.cpp's own quantizer, when ``llama-cpp-python`` is installed.

No numpy K-quantizer exists (FORMATS.md §1), and reimplementing llama.cpp's mixed-precision recipes
(which tensors get Q6_K in Q4_K_M...) would drift from the reference. So the merged model is written as
F16 to a temporary file and handed to ``llama_model_quantize``, whose output is renamed into place only
when it succeeds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from pathlib import Path

from llamaforge_tui.core.gguf.writer import ExportError

KQUANT_TYPES = ("q4_k_m", "q5_k_m", "q6_k")
INSTALL_HINT = 'pip install "llamaforge-tui[verify]"'


def kquant_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _ftype(llama_cpp: object, out_type: str) -> int:
    name = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
            "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}.get(out_type)
    if name is None:
        raise ExportError(f"{out_type} is not a K-quant type ({', '.join(KQUANT_TYPES)})")
    return int(getattr(llama_cpp, name))


def quantize_file(src: Path | str, dst: Path | str, out_type: str, *, threads: int | None = None) -> int:
    """Quantize the GGUF ``src`` to ``out_type`` at ``dst`` (atomic); returns the output size."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ExportError(f"{out_type.upper()} needs llama.cpp's quantizer: install it with {INSTALL_HINT}, "
                          "or export q8_0/q4_0/q5_0 (pure Python)") from exc
    dst = Path(dst)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _ftype(llama_cpp, out_type)
    params.nthread = threads or max(1, os.cpu_count() or 1)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    os.close(fd)
    try:
        from llamaforge_tui.core.export.verify import quiet_stderr

        with quiet_stderr():
            rc = llama_cpp.llama_model_quantize(str(src).encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            raise ExportError(f"llama.cpp could not quantize {src} to {out_type.upper()} (code {rc})")
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dst.stat().st_size
